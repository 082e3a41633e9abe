"""int8 variants of the image models, with their own cards.

    python -m pipeline.quantize --task ecg            # models/heart/ecg.int8.onnx + card
    python -m pipeline.quantize --task retina         # models/diabetes/retina.int8.onnx + card
    python -m pipeline.quantize --onnx my.onnx --images calib/ [--eval-images labelled/]
                                                      # a user's own model (see below)

ONNX Runtime's static quantization: QDQ format, int8 weights per output channel (reduced to
7 bits, which avoids the u8×s8 overflow of AVX2 kernels on CPUs without VNNI), uint8
activations whose ranges are calibrated (MinMax, or a percentile: see RECIPES) on freshly
generated images whose seeds are
disjoint from training, held-out and example images. The variant is then compared with its fp32
parent on the whole held-out set — accuracy, agreement of the predicted class, largest
probability difference — and timed on this CPU; everything goes into its card, next to the
parent's. Choosing a variant is configuration: point the model's card setting at
`<model>.int8.card.json` (e.g. HEART__MODELS__IMAGE__CARD=heart/ecg.int8.card.json).

For a user's own model (made with `python -m pipeline.convert torchvision ...`), `--onnx` names
its fp32 file (its card must sit next to it), `--images` a folder of calibration photos, and
`--eval-images` an optional folder of labelled photos named `<class index>-*.jpg|png` for the
accuracy and agreement figures (without it, agreement is measured on the calibration photos and
the card says so).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import common, images, preprocess

CALIBRATION_BLOCK = 900  # seed block for calibration images (training uses 0.., held-out 500)


def _cpu() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def calibration_images(task: str, n: int) -> np.ndarray:
    """`n` generated images (balanced classes, disjoint seeds, half JPEG), preprocessed."""
    cfg = images.TASKS[task]
    k = len(cfg["labels"])
    base = cfg["seed"] * 1000 + CALIBRATION_BLOCK
    rng = np.random.default_rng([cfg["seed"], CALIBRATION_BLOCK])
    plan = [(task, i % k, base * 100_000 + i, bool(rng.random() < 0.5)) for i in range(n)]
    x = np.stack([images._render(p) for p in tqdm(plan, desc=f"calibration {task}", mininterval=10)])
    return preprocess.normalise(x)


def folder_images(folder: Path, spec: dict) -> tuple[np.ndarray, list[int | None]]:
    """The photos of `folder` through the model card's own preprocessing `spec`."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise SystemExit(f"no .jpg/.png images in {folder}")
    xs = np.concatenate([preprocess.preprocess_file(p, spec) for p in files])
    labels = []
    for p in files:
        head = p.name.split("-", 1)[0]
        labels.append(int(head) if head.isdigit() else None)
    return xs, labels


class _Reader:
    """Feeds calibration batches to ONNX Runtime's calibrator."""

    def __init__(self, name: str, x: np.ndarray, batch: int = 1):
        self.items = [{name: x[i:i + batch]} for i in range(0, len(x), batch)]
        self.i = 0

    def get_next(self):
        if self.i >= len(self.items):
            return None
        self.i += 1
        return self.items[self.i - 1]

    def rewind(self):
        self.i = 0


# How each model is quantized. `minmax` (every op, ranges from the calibration minimum and
# maximum) keeps the ECG ResNet50's predictions (agreement 1.000). EfficientNet-B0's
# activations have long tails, and MinMax spent the 8 bits on them: agreement 0.756 on the
# held-out set. `retina` quantizes only the convolutions and the classifier, with ranges clipped
# at the 99.99th percentile, and leaves the stem and the 16 depthwise convolutions in float32.
# Agreement measured on 200 images from another seed block (950), 2026-11-27: convolutions
# only with MinMax 0.765; with the 99.999th percentile 0.910, the 99.99th 0.985; the 99.99th
# with stem and depthwise in float32 0.995 (with the 99.999th: 0.955).
RECIPES = {
    "minmax": {"ops": None, "percentile": None, "keep_float": ()},
    "retina": {"ops": ["Conv", "Gemm", "MatMul"], "percentile": 99.99,
               "keep_float": ("stem", "depthwise")},
}


def _kept_float(model, keep: tuple[str, ...]) -> list[str]:
    """Names of the nodes a recipe leaves in float32: the first convolution (`stem`) and
    convolutions with one group per channel (`depthwise`)."""
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    out = []
    if "stem" in keep and convs:
        out.append(convs[0].name)
    if "depthwise" in keep:
        out += [n.name for n in convs
                if any(a.name == "group" and a.i > 1 for a in n.attribute)]
    return out


def describe(recipe: str) -> str:
    r = RECIPES[recipe]
    what = ("every op" if r["ops"] is None else "only " + ", ".join(r["ops"]))
    cal = ("MinMax calibration" if r["percentile"] is None
           else f"activation ranges at the {r['percentile']}th percentile of the calibration")
    kept = (f"; kept in float32: {' and '.join(r['keep_float'])} convolutions"
            if r["keep_float"] else "")
    return (f"QDQ format, {what}, int8 weights per output channel reduced to 7 bits, uint8 "
            f"activations, {cal}{kept}")


def quantize(fp32: Path, dest: Path, calib: np.ndarray, input_name: str,
             recipe: str = "minmax") -> None:
    import onnx
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    r = RECIPES[recipe]
    with tempfile.TemporaryDirectory() as tmp:
        prep = Path(tmp) / "prep.onnx"
        quant_pre_process(str(fp32), str(prep), skip_symbolic_shape=True)
        options = {}
        if r["ops"] is not None:
            options["op_types_to_quantize"] = r["ops"]
        if r["keep_float"]:
            options["nodes_to_exclude"] = _kept_float(onnx.load(str(prep)), r["keep_float"])
        if r["percentile"] is not None:
            options["calibrate_method"] = CalibrationMethod.Percentile
            options["extra_options"] = {"CalibPercentile": r["percentile"]}
        else:
            options["calibrate_method"] = CalibrationMethod.MinMax
        quantize_static(
            str(prep), str(dest), _Reader(input_name, calib),
            quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, **options,
        )


def _session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def compare(fp32: Path, int8: Path, x: np.ndarray, y: list[int | None], input_name: str) -> dict:
    """Accuracy of both, agreement of their predicted classes, largest probability gap."""
    s32, s8 = _session(fp32, os.cpu_count() or 1), _session(int8, os.cpu_count() or 1)
    p32, p8 = [], []
    for s in tqdm(range(0, len(x), 20), desc="compare fp32/int8", mininterval=10):
        xb = x[s:s + 20]
        p32.append(common.softmax(s32.run(None, {input_name: xb})[0]))
        p8.append(common.softmax(s8.run(None, {input_name: xb})[0]))
    p32, p8 = np.concatenate(p32), np.concatenate(p8)
    a32, a8 = p32.argmax(1), p8.argmax(1)
    out = {
        "compared_on": int(len(x)),
        "agreement_with_fp32": round(float((a32 == a8).mean()), 4),
        "max_abs_prob_diff_vs_fp32": round(float(np.abs(p32 - p8).max()), 4),
    }
    labelled = [i for i, t in enumerate(y) if t is not None]
    if labelled:
        t = np.array([y[i] for i in labelled])
        out["accuracy_int8"] = round(float((a8[labelled] == t).mean()), 4)
        out["accuracy_fp32"] = round(float((a32[labelled] == t).mean()), 4)
        k = p8.shape[1]
        cm = np.zeros((k, k), np.int64)
        for ti, pi in zip(t, a8[labelled]):
            cm[ti, pi] += 1
        out["confusion_matrix_int8"] = cm.tolist()
    return out


def timing(path: Path, input_name: str, shape, runs: int = 20) -> dict:
    """Mean batch-1 inference time on this CPU, 1 and 2 intra-op threads, after 3 warm-up runs."""
    x = np.random.default_rng(0).random([1, *shape[1:]], dtype=np.float32)
    out = {}
    for threads in (1, 2):
        s = _session(path, threads)
        for _ in range(3):
            s.run(None, {input_name: x})
        t = time.perf_counter()
        for _ in range(runs):
            s.run(None, {input_name: x})
        out[f"threads_{threads}_ms"] = round((time.perf_counter() - t) / runs * 1e3, 2)
    return out


def variant_card(parent: dict, fp32: Path, int8: Path, calibration: str, metrics: dict,
                 speed: dict, recipe: str = "minmax") -> dict:
    import onnx
    import onnxruntime as ort

    card = copy.deepcopy(parent)
    card["model_id"] = parent["model_id"] + "-int8"
    card["file"] = int8.name
    card["sha256"] = common.sha256_file(int8)
    card["size_bytes"] = int8.stat().st_size
    m = onnx.load(str(int8), load_external_data=False)
    card["framework"] = {**parent["framework"],
                         "onnx_opsets": {(o.domain or "ai.onnx"): o.version for o in m.opset_import}}
    card["quantization"] = {
        "from": {"file": fp32.name, "model_id": parent["model_id"], "version": parent["version"],
                 "sha256": parent["sha256"], "size_bytes": parent["size_bytes"]},
        "method": "ONNX Runtime static quantization (onnxruntime.quantization.quantize_static): "
                  + describe(recipe),
        "calibration": calibration,
        "onnxruntime": ort.__version__,
    }
    card["metrics"] = {**metrics, "parent_metrics": parent.get("metrics", {})}
    card["speed"] = {"cpu": _cpu(), "batch": 1, "int8": speed["int8"], "fp32": speed["fp32"],
                     "measured_with": "onnxruntime (Python), CPU provider, mean of 20 runs "
                                      "after 3 warm-up runs"}
    card["load_cost"] = common.measure_load_rss(int8, card["input"]["shape"], "float32")
    return card


def run(fp32: Path, calib: np.ndarray, calibration: str, eval_x: np.ndarray,
        eval_y: list[int | None], eval_note: str, recipe: str = "minmax") -> Path:
    parent = json.loads(fp32.with_suffix(".card.json").read_text())
    name = parent["input"]["name"]
    int8 = fp32.with_name(fp32.stem + ".int8.onnx")
    quantize(fp32, int8, calib, name, recipe)
    metrics = compare(fp32, int8, eval_x, eval_y, name)
    metrics["compared_on_note"] = eval_note
    speed = {"fp32": timing(fp32, name, parent["input"]["shape"]),
             "int8": timing(int8, name, parent["input"]["shape"])}
    print(f"{int8.name}: {int8.stat().st_size / 2**20:.1f} MB (fp32 "
          f"{fp32.stat().st_size / 2**20:.1f} MB); {json.dumps(metrics)}; {json.dumps(speed)}")
    card = variant_card(parent, fp32, int8, calibration, metrics, speed, recipe)
    return common.write_card(int8, card)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--task", choices=list(images.TASKS))
    ap.add_argument("--calibration", type=int, default=100, help="generated calibration images")
    ap.add_argument("--onnx", type=Path, help="a user's fp32 model (card next to it)")
    ap.add_argument("--images", type=Path, help="calibration photos for --onnx")
    ap.add_argument("--eval-images", type=Path, help="labelled photos <class>-*.jpg for --onnx")
    a = ap.parse_args(argv)
    if a.task:
        cfg = images.TASKS[a.task]
        fp32 = common.MODELS_DIR / cfg["disease"] / f"{cfg['file']}.onnx"
        calib = calibration_images(a.task, a.calibration)
        out = images._cache(a.task)
        x = preprocess.normalise(np.load(out / "test_x.npy", mmap_mode="r")[:])
        y = [int(v) for v in np.load(out / "test_y.npy")]
        run(fp32, calib,
            f"{a.calibration} images generated by models/pipeline/synth_{a.task}.py with seeds "
            f"disjoint from training, held-out and examples (block {CALIBRATION_BLOCK}), half "
            "re-encoded as JPEG",
            x, y, f"the fp32 model's held-out set ({len(y)} generated images)",
            a.task if a.task in RECIPES else "minmax")
    elif a.onnx and a.images:
        spec = json.loads(a.onnx.with_suffix(".card.json").read_text())["preprocessing"]
        calib, _ = folder_images(a.images, spec)
        if a.eval_images:
            x, y = folder_images(a.eval_images, spec)
            note = f"{len(y)} photos from {a.eval_images}"
        else:
            x, y = calib, [None] * len(calib)
            note = "the calibration photos themselves (no labelled evaluation set was given)"
        run(a.onnx, calib, f"{len(calib)} photos from {a.images}", x, y, note)
    else:
        ap.error("give --task, or --onnx with --images")


if __name__ == "__main__":
    main()
