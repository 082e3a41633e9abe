"""Class activation maps for the image models: each model gains a second output, `cam`, the
class activation map of every class (Zhou et al., "Learning Deep Features for Discriminative
Localization", 2016), computed inside the graph from the last feature map and the classifier's
weights.

    python -m pipeline.cam                   # every image model in models/ (fp32 and int8)
    python -m pipeline.cam diabetes/retina.onnx

Both models end in global average pooling and a linear layer: logits = W · mean(F) + b, for the
last feature map F [C, h, w]. The map of class k is W[k] · F + b[k] at each of the h×w places;
its mean over the grid is then exactly logit k. It is one 1×1 convolution of F,
added as `Reshape(W) -> Conv(F) -> cam` [N, classes, h, w]; the logits' path is not touched (the
step checks that the logits are unchanged, and that each map's mean is its logit, on real
inputs). The card names the output (`explanation: {method: "cam", output, grid}`) and takes the
new file's hash, size and load cost; the int8 variants' cards take their parent's new hash.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from . import common

OUTPUT = "cam"
TOLERANCE = 1e-4


def _producer(graph, name):
    return next((n for n in graph.node if name in n.output), None)


def _find_head(graph):
    """The classifier Gemm (transB=1) producing the logits, and the feature map that the
    global average pool before it takes (through Flatten and any quantize/dequantize pairs)."""
    logits = graph.output[0].name
    node = _producer(graph, logits)
    while node is not None and node.op_type in ("DequantizeLinear", "QuantizeLinear"):
        node = _producer(graph, node.input[0])
    if node is None or node.op_type != "Gemm":
        raise SystemExit(f"the logits do not come from a Gemm ({node and node.op_type})")
    attrs = {a.name: a for a in node.attribute}
    if "transB" not in attrs or attrs["transB"].i != 1:
        raise SystemExit("the classifier Gemm does not take its weight transposed (transB=1)")
    gemm = node
    node = _producer(graph, gemm.input[0])
    while node is not None and node.op_type in ("Flatten", "DequantizeLinear", "QuantizeLinear"):
        node = _producer(graph, node.input[0])
    if node is None or node.op_type != "GlobalAveragePool":
        raise SystemExit("no global average pool before the classifier: CAM needs one")
    return gemm, node.input[0]


def _constant(graph, name: str):
    """A tensor's value if it is a constant: an initializer, or (an int8 model's bias) the
    dequantization of one."""
    from onnx import numpy_helper

    inits = {i.name: i for i in graph.initializer}
    if name in inits:
        return numpy_helper.to_array(inits[name]).astype(np.float32)
    node = _producer(graph, name)
    if node is None or node.op_type != "DequantizeLinear" or \
            not all(i in inits for i in node.input if i):
        return None
    q, scale = (numpy_helper.to_array(inits[i]) for i in node.input[:2])
    zero = numpy_helper.to_array(inits[node.input[2]]) if len(node.input) > 2 and node.input[2] \
        else np.zeros_like(q)
    return ((q.astype(np.float64) - zero.astype(np.float64)) * scale).astype(np.float32)


def add_cam(src: Path, dest: Path) -> dict:
    """Writes `src` with the `cam` output to `dest`; gives the explanation entry for its card."""
    import onnx
    from onnx import helper, numpy_helper, shape_inference

    model = onnx.load(str(src))
    graph = model.graph
    if any(o.name == OUTPUT for o in graph.output):
        raise SystemExit(f"{src} already has a `{OUTPUT}` output")
    gemm, features = _find_head(graph)
    inferred = shape_inference.infer_shapes(model)
    info = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    dims = [d.dim_value for d in info[features].type.tensor_type.shape.dim]
    if len(dims) != 4 or not all(dims[1:]):
        raise SystemExit(f"feature map {features} has shape {dims}, not [N, C, h, w]")
    _, channels, h, w = dims
    bias = _constant(graph, gemm.input[2] if len(gemm.input) > 2 else "")
    if bias is None:
        raise SystemExit("the classifier's bias is not a constant")
    classes = int(bias.shape[0])
    graph.initializer.extend([
        numpy_helper.from_array(np.array([classes, channels, 1, 1], np.int64), "cam_weight_shape"),
        numpy_helper.from_array(bias, "cam_bias"),
    ])
    graph.node.extend([
        helper.make_node("Reshape", [gemm.input[1], "cam_weight_shape"], ["cam_weight"],
                         name="cam/Reshape"),
        helper.make_node("Conv", [features, "cam_weight", "cam_bias"], [OUTPUT], name="cam/Conv",
                         kernel_shape=[1, 1]),
    ])
    graph.output.append(helper.make_tensor_value_info(OUTPUT, onnx.TensorProto.FLOAT,
                                                      ["N", classes, h, w]))
    onnx.checker.check_model(model)
    onnx.save(model, str(dest))
    return {"method": "cam", "output": OUTPUT, "grid": [h, w], "feature_map": features,
            "channels": channels}


def logits_step(path: Path) -> float:
    """The logits' quantization step (an int8 model quantizes its output; 0 for fp32)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path), load_external_data=False).graph
    node = _producer(graph, graph.output[0].name)
    if node is None or node.op_type != "DequantizeLinear":
        return 0.0
    inits = {i.name: i for i in graph.initializer}
    return float(numpy_helper.to_array(inits[node.input[1]]).max())


def check(old: Path, new: Path, x: np.ndarray, input_name: str) -> dict:
    """The logits are the old model's, and each class's map averages to its logit (to within
    one quantization step of the logits for an int8 model, whose maps are not quantized)."""
    import onnxruntime as ort

    def session(p):
        o = ort.SessionOptions()
        o.intra_op_num_threads = 2
        return ort.InferenceSession(str(p), o, providers=["CPUExecutionProvider"])

    before = session(old).run(["logits"], {input_name: x})[0]
    logits, cam = session(new).run(["logits", OUTPUT], {input_name: x})
    same = float(np.abs(before - logits).max())
    means = cam.mean(axis=(2, 3))
    mean = float(np.abs(means - logits).max())
    if not same <= TOLERANCE:
        raise SystemExit(f"{new}: the logits moved by {same:.2e}")
    result = {"logits_unchanged_max_abs_diff": same, "map_mean_vs_logit_max_abs_diff": mean,
              "checked_on": int(len(x))}
    if logits_step(new) == 0.0:
        if not mean <= TOLERANCE:
            raise SystemExit(f"{new}: map means differ from the logits by {mean:.2e}")
        result["tolerance"] = TOLERANCE
    else:
        # An int8 model quantizes its pooled features and its logits, not the maps: their means
        # are the logits before quantization, so the check is that they rank the classes alike.
        if not (means.argmax(1) == logits.argmax(1)).all():
            raise SystemExit(f"{new}: the maps' means do not pick the logits' class")
        result["tolerance"] = "the maps' means pick the logits' class (int8: quantized logits)"
    return result


def example_inputs(card: dict, disease: str) -> np.ndarray:
    """The committed example images of this model, preprocessed as the card says."""
    from . import preprocess

    folder = common.MODELS_DIR / "examples" / ("retina" if disease == "diabetes" else "ecg")
    files = sorted(p for p in folder.iterdir() if p.suffix in (".jpg", ".png"))
    return np.concatenate([preprocess.preprocess_file(p, card["preprocessing"]) for p in files])


def update(onnx_path: Path) -> None:
    card_path = onnx_path.with_suffix(".card.json")
    card = json.loads(card_path.read_text())
    tmp = onnx_path.with_suffix(".cam.tmp")
    entry = add_cam(onnx_path, tmp)
    entry["parity"] = check(onnx_path, tmp, example_inputs(card, card["disease"]),
                            card["input"]["name"])
    tmp.replace(onnx_path)
    old_sha = card["sha256"]
    card["sha256"] = common.sha256_file(onnx_path)
    card["size_bytes"] = onnx_path.stat().st_size
    h, w = entry["grid"]
    card["outputs"] = [o for o in card["outputs"] if o["name"] != OUTPUT] + [
        {"name": OUTPUT, "shape": [-1, len(card["classes"]), h, w], "dtype": "float32",
         "kind": "class activation maps"}]
    card["explanation"] = entry
    card["load_cost"] = common.measure_load_rss(onnx_path, card["input"]["shape"], "float32")
    common.write_card(onnx_path, card)
    # Variants made from this file name it by its hash.
    for other in onnx_path.parent.glob("*.card.json"):
        c = json.loads(other.read_text())
        parent = c.get("quantization", {}).get("from", {})
        if parent.get("sha256") == old_sha:
            parent["sha256"] = card["sha256"]
            parent["size_bytes"] = card["size_bytes"]
            other.write_text(json.dumps(c, indent=2, ensure_ascii=False) + "\n")
            print(f"updated {other}: parent {onnx_path.name} is {card['sha256'][:12]}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("models", nargs="*", help="ONNX files (default: every image model)")
    a = ap.parse_args(argv)
    paths = [Path(p) if Path(p).is_absolute() else common.MODELS_DIR / p for p in a.models]
    if not paths:
        cards = sorted(common.MODELS_DIR.glob("*/*.card.json"))
        images = [c for c in cards if json.loads(c.read_text())["modality"] == "image"]
        # Parents first: a variant's card then names its parent's new hash.
        images.sort(key=lambda c: "quantization" in json.loads(c.read_text()))
        paths = [c.parent / json.loads(c.read_text())["file"] for c in images]
    for p in paths:
        update(p)


if __name__ == "__main__":
    main()
