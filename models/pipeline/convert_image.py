"""`python -m pipeline.convert image`: a user's image classifier, as they saved it — a state dict
or training checkpoint of a torchvision (or timm) architecture, a TorchScript file, an ONNX
file, or (trusted) a whole pickled model — with the preprocessing it was trained with."""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import numpy as np

from . import common, preprocess
from .convert import (ConvertError, demo_and_notice, fail, preprocessing_from_args, publish,
                      serve_hint, work_dir)

# Where checkpoints keep the weights, in the order they are looked for.
CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "state_dict_ema",
                   "model_ema", "ema", "weights", "module")
# Prefixes wrappers add to every key: DataParallel/DistributedDataParallel, torch.compile,
# Lightning modules holding the network as `self.model`/`self.net`, swa_utils.AveragedModel.
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.", "net.", "network.")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MAX_EXAMPLES = 64


def _is_state_dict(d) -> bool:
    import torch

    return isinstance(d, dict) and bool(d) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items())


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def load_source(path: Path, trust_pickle: bool):
    """('onnx', path) | ('module', nn.Module, how) | ('state_dict', dict, how)."""
    import torch

    if not path.is_file():
        fail(f"{path}: no such file")
    if path.suffix.lower() == ".onnx":
        return ("onnx", path, "an ONNX file")
    if _is_torchscript(path):
        try:
            return ("module", torch.jit.load(str(path), map_location="cpu"), "a TorchScript file")
        except Exception as e:  # noqa: BLE001
            fail(f"{path}: TorchScript cannot load it ({type(e).__name__}: {str(e)[:160]})")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" not in str(e):
            fail(f"{path}: not a PyTorch file ({str(e).splitlines()[0][:120]}); give a state dict, "
                 "a checkpoint, a TorchScript or an ONNX file")
        if not trust_pickle:
            fail(f"{path} holds pickled Python objects (a whole model saved with "
                 "torch.save(model), or a checkpoint with objects in it): loading it runs code "
                 "from the file. If you trust where it came from, rerun with --trust-pickle; "
                 "otherwise save model.state_dict() and convert that")
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=False)
        except (ModuleNotFoundError, AttributeError) as e:
            fail(f"{path}: unpickling needs code that is not importable here ({e}); run the "
                 "converter where the model's classes can be imported (PYTHONPATH), or save "
                 "model.state_dict() and give --arch")
    except (RuntimeError, EOFError, OSError) as e:
        fail(f"{path}: not a readable PyTorch file ({str(e).splitlines()[0][:160]})")
    if isinstance(obj, torch.nn.Module):
        return ("module", obj, "a whole pickled model")
    if _is_state_dict(obj):
        return ("state_dict", obj, "a state dict")
    if isinstance(obj, dict):
        for key in CHECKPOINT_KEYS:
            v = obj.get(key)
            if _is_state_dict(v):
                return ("state_dict", v, f"a checkpoint (weights under {key!r})")
            if isinstance(v, torch.nn.Module):
                return ("module", v, f"a checkpoint (model object under {key!r})")
        keys = ", ".join(str(k) for k in list(obj)[:12])
        fail(f"{path}: found a dict with keys {keys} but no state dict; expected the weights "
             f"themselves or a checkpoint with them under one of {', '.join(CHECKPOINT_KEYS)}")
    fail(f"{path}: found a {type(obj).__name__}; expected a state dict, a checkpoint, a "
         "TorchScript or an ONNX file")


def strip_prefixes(sd: dict) -> tuple[dict, list[str]]:
    sd = {k: v for k, v in sd.items() if k != "n_averaged"}  # swa_utils.AveragedModel's counter
    stripped = []
    while True:
        for p in WRAPPER_PREFIXES:
            if all(k.startswith(p) for k in sd):
                sd = {k[len(p):]: v for k, v in sd.items()}
                stripped.append(p)
                break
        else:
            return sd, stripped


def builder(arch: str):
    import torchvision

    name = arch.removeprefix("timm:")
    if name not in torchvision.models.list_models(module=torchvision.models):
        fail(f"unknown architecture {arch!r}: give a torchvision classification model name such as "
             "resnet50, efficientnet_b0, mobilenet_v3_small (torchvision.models.list_models() "
             "lists them), or timm:<the same name> for weights saved from timm")
    return name, torchvision.models.get_model_builder(name)


def _shapes(sd: dict) -> list[tuple]:
    return [tuple(v.shape) for v in sd.values()]


def head_key(model) -> str | None:
    """The weight of the last Linear layer: the classifier whose size is the class count."""
    import torch

    last = None
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            last = name
    return None if last is None else f"{last}.weight"


def guess_arch(sd: dict, n: int, near: str = "") -> str | None:
    """A torchvision architecture whose keys and shapes are exactly these weights' (the ones
    named like `near` tried first)."""
    import warnings

    import torch
    import torchvision

    want = {k: tuple(v.shape) for k, v in sd.items()}
    names = torchvision.models.list_models(module=torchvision.models)
    names.sort(key=lambda m: not m.startswith(near[:5]))
    for name in names:
        try:
            with torch.device("meta"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                m = torchvision.models.get_model(name, weights=None, num_classes=n)
        except Exception:  # noqa: BLE001 — some builders refuse a class count
            continue
        if {k: tuple(v.shape) for k, v in m.state_dict().items()} == want:
            return name
    return None


def build_from_state_dict(arch: str | None, sd: dict, classes: list[str], src: Path):
    import torch

    if not arch:
        fail(f"{src} holds only weights: say which architecture they belong to with --arch "
             "(a torchvision name, or timm:<name> for timm weights)")
    name, build = builder(arch)
    sd, stripped = strip_prefixes(sd)
    with torch.device("meta"):
        probe = build(weights=None, num_classes=len(classes))
    key = head_key(probe)
    expect = probe.state_dict()
    notes = [f"stripped {''.join(stripped)!r} from every key"] if stripped else []
    if arch.startswith("timm:") and set(sd) != set(expect):
        # timm names the same tensors differently; the families it shares with torchvision
        # register them in the same order with the same shapes.
        if _shapes(sd) != _shapes(expect):
            fail(f"{src}: these timm weights do not map onto torchvision's {name} (tensor shapes "
                 "differ in order); only timm models of the same family map")
        sd = dict(zip(expect.keys(), sd.values()))
        notes.append(f"mapped {len(sd)} timm tensors onto torchvision's {name} by position")
    if key and key in sd and sd[key].shape[0] != len(classes):
        fail(f"the weights' classifier ({key}) has {sd[key].shape[0]} outputs but --classes names "
             f"{len(classes)} ({', '.join(classes)}): give one label per output, in order")
    missing = [k for k in expect if k not in sd]
    unexpected = [k for k in sd if k not in expect]
    wrong = [k for k in expect if k in sd and tuple(sd[k].shape) != tuple(expect[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} of {name}'s tensors missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unknown keys (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} of other shapes (e.g. {k} is {list(sd[k].shape)} in the "
                         f"file, {list(expect[k].shape)} in {name})")
        n_head = sd[key].shape[0] if key and key in sd else len(classes)
        guess = guess_arch(sd, n_head, name)
        hint = (f"these weights fit {guess}: give --arch {guess}" if guess and guess != name else
                "check --arch, or save model.state_dict() of the model you trained")
        if not guess and any(k.startswith(("conv_stem.", "blocks.")) for k in sd):
            hint = f"they look like timm weights: try --arch timm:{name}"
        fail(f"{src.name} does not fit {name} ({hint}): " + "; ".join(parts))
    model = build(weights=None, num_classes=len(classes))
    model.load_state_dict(sd, strict=True)
    return model, name, notes


def export_torch(model, path: Path, width: int, height: int):
    import onnx
    import torch

    model.eval()
    dummy = torch.zeros(2, 3, height, width)
    try:
        torch.onnx.export(model, (dummy,), str(path), input_names=["image"],
                          output_names=["logits"], opset_version=17,
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
                          dynamo=False)
    except Exception as e:  # noqa: BLE001
        fail(f"the model cannot be exported to ONNX ({type(e).__name__}: "
             f"{str(e).splitlines()[0][:200]})")
    onnx.checker.check_model(onnx.load(str(path)))


def adapt_onnx(src: Path, dest: Path, width: int, height: int) -> list[str]:
    """The user's ONNX file with input `image`, output `logits` (a final Softmax removed: the
    services apply it), checked against the preprocessing's input size."""
    import onnx

    try:
        m = onnx.load(str(src))
    except Exception as e:  # noqa: BLE001
        fail(f"{src}: not a readable ONNX file ({type(e).__name__}: {str(e)[:120]})")
    g = m.graph
    init = {i.name for i in g.initializer}
    inputs = [i for i in g.input if i.name not in init]
    if len(inputs) != 1 or len(g.output) != 1:
        fail(f"{src}: the model has {len(inputs)} inputs and {len(g.output)} outputs; an image "
             "classifier needs one image input and one class-score output")
    dims = [d.dim_value if d.HasField("dim_value") else None
            for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4 or dims[1] not in (None, 3):
        fail(f"{src}: its input {inputs[0].name!r} has shape {dims}; expected [N, 3, H, W]")
    if dims[0] not in (None, 1):
        fail(f"{src}: its batch size is fixed at {dims[0]}; export it with a dynamic batch or 1")
    if dims[2] not in (None, height) or dims[3] not in (None, width):
        fail(f"{src} takes {dims[3]}x{dims[2]} images but the preprocessing gives {width}x{height}:"
             " give the resize/crop it was trained with")
    notes = []
    out_name = g.output[0].name
    last = [n for n in g.node if out_name in n.output]
    if last and last[0].op_type == "Softmax":
        # The services apply softmax to the logits: drop the model's own.
        node = last[0]
        logits_src = node.input[0]
        g.node.remove(node)
        out = g.output[0]
        out.name = logits_src
        out_name = logits_src
        notes.append("removed its final Softmax (the services apply it)")
    renames = {inputs[0].name: "image", out_name: "logits"}
    for n in g.node:
        for i, v in enumerate(n.input):
            n.input[i] = renames.get(v, v)
        for i, v in enumerate(n.output):
            n.output[i] = renames.get(v, v)
    inputs[0].name = "image"
    g.output[0].name = "logits"
    # The services' cards say a dynamic batch; a file exported with batch 1 usually runs with
    # any (checked below).
    for vi in (inputs[0], g.output[0]):
        dim = vi.type.tensor_type.shape.dim
        if dim and dim[0].HasField("dim_value"):
            dim[0].dim_param = "batch"
            notes.append(f"made {vi.name}'s batch dimension dynamic")
    onnx.checker.check_model(m)
    onnx.save(m, str(dest))
    import onnxruntime as ort

    try:
        sess = ort.InferenceSession(str(dest), providers=["CPUExecutionProvider"])
        sess.run(["logits"], {"image": np.zeros((2, 3, height, width), np.float32)})
    except Exception as e:  # noqa: BLE001
        fail(f"{src} does not run with a batch of 2 once its batch is made dynamic "
             f"({type(e).__name__}: {str(e).splitlines()[0][:120]}): export it with a dynamic "
             "batch (torch.onnx.export(..., dynamic_axes={'input': {0: 'batch'}}))")
    return sorted(set(notes), key=notes.index)


def examples_of(folder: str | None) -> list[Path]:
    if not folder:
        return []
    d = Path(folder)
    if not d.is_dir():
        fail(f"--examples {folder}: not a folder")
    files = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        fail(f"--examples {folder}: no .png/.jpg images in it")
    return files[:MAX_EXAMPLES]


def convert_image(a) -> Path:
    import onnxruntime as ort
    import torch

    classes = [c.strip() for c in a.classes.split(",") if c.strip()]
    if len(classes) < 2 or len(set(classes)) != len(classes):
        fail("--classes needs at least two distinct comma-separated labels, in output order")
    names = ([n.strip() for n in a.names.split(",")] if a.names
             else [c.replace("_", " ").capitalize() for c in classes])
    bands = ([b.strip() for b in a.risk_bands.split(",")] if a.risk_bands
             else ["unknown"] * len(classes))
    if len(names) != len(classes) or len(bands) != len(classes):
        fail("--names and --risk-bands need one entry per class")
    spec = preprocessing_from_args(a)
    if spec is None:
        fail("say how the training images were preprocessed: --transform '<print(your eval "
             "transform)>' or --resize/--crop (and --interpolation/--mean/--std if not the "
             "defaults); the service feeds the model exactly that")
    width, height = preprocess.input_size(spec)
    src = Path(a.model)
    kind, obj, how = load_source(src, a.trust_pickle)
    examples = examples_of(a.examples)
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (16, 3, height, width)).astype(np.float32)
    name = a.name or "image"
    demo, notice, validation = demo_and_notice(
        a, "Model supplied by its owner; see their documentation.")
    with work_dir() as tmp:
        onnx_path = Path(tmp) / f"{name}.onnx"
        notes: list[str] = []
        if kind == "onnx":
            notes = adapt_onnx(obj, onnx_path, width, height)
            ref_sess = ort.InferenceSession(str(obj), providers=["CPUExecutionProvider"])
            removed_softmax = any("Softmax" in n for n in notes)

            def reference(batch):
                # One image at a time: a user's export may fix the batch at 1.
                feed = ref_sess.get_inputs()[0].name
                out = np.concatenate([ref_sess.run(None, {feed: batch[i:i + 1]})[0]
                                      for i in range(len(batch))])
                return out if removed_softmax else common.softmax(out)
            arch, source_kind = "onnx", "onnx"
        else:
            if kind == "state_dict":
                model, arch, notes = build_from_state_dict(a.arch, obj, classes, src)
            else:
                model, arch = obj, a.arch or type(obj).__name__
            model.eval()

            def reference(batch):
                with torch.no_grad():
                    return torch.softmax(model(torch.from_numpy(batch)), 1).numpy()
            try:
                probe = reference(x[:2])
            except Exception as e:  # noqa: BLE001
                fail(f"the model does not run on {width}x{height} images ({type(e).__name__}: "
                     f"{str(e).splitlines()[0][:160]}): check the preprocessing's size")
            if probe.ndim != 2 or probe.shape[1] != len(classes):
                fail(f"the model gives {list(probe.shape[1:])} scores per image but --classes names "
                     f"{len(classes)}: give one label per output, in order")
            export_torch(model, onnx_path, width, height)
            source_kind = "pytorch"
        sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])

        def served(batch):
            return common.softmax(np.concatenate(
                [sess.run(["logits"], {"image": batch[i:i + 1]})[0] for i in range(len(batch))]))
        got = served(x)
        if got.shape[1] != len(classes):
            fail(f"the model gives {got.shape[1]} scores per image but --classes names "
                 f"{len(classes)}: give one label per output, in order")
        diff = float(np.abs(reference(x) - got).max())
        if not diff <= 1e-4:
            fail(f"parity check failed: {source_kind} vs ONNX Runtime max |dp| {diff:.2e} "
                 "(> 1e-4) on 16 random images; nothing written")
        metrics = {f"parity_max_abs_prob_diff_{source_kind}_vs_onnxruntime": diff,
                   "parity_checked_on": f"16 random {width}x{height} normalised images"}
        records = []
        if examples:
            ex_diff = 0.0
            for f in examples:
                t = preprocess.preprocess_file(f, spec)
                p = served(t)[0]
                ex_diff = max(ex_diff, float(np.abs(reference(t)[0] - p).max()))
                records.append({"file": f.name, "probabilities": [float(v) for v in p]})
            if not ex_diff <= 1e-4:
                fail(f"parity check failed on the example images: max |dp| {ex_diff:.2e}")
            metrics["parity_examples"] = {"images": len(records), "max_abs_prob_diff": ex_diff}
        card = common.image_card(
            model_id=a.model_id, onnx_path=onnx_path, arch=arch, labels=classes, names=names,
            risk_band_by_class=bands, metrics=metrics, disease=a.disease, demo=demo,
            notice=notice, version=a.version, preprocessing=spec,
            training={"data": a.training_note or "provided by the model's owner (not recorded)"},
            framework={"name": source_kind, "architecture": arch, "source": how,
                       "source_file": src.name, "conversion_notes": notes,
                       "converted_by": "models/pipeline/convert.py",
                       "versions": common.versions()})
        if validation:
            card["validation"] = validation
        common.write_card(onnx_path, card, quiet=True)
        files = [onnx_path.name, onnx_path.with_suffix(".card.json").name]
        if records:
            ex_file = Path(tmp) / f"{name}.examples.json"
            ex_file.write_text(json.dumps({
                "model_sha256": card["sha256"], "folder": str(Path(a.examples).resolve()),
                "tolerance": 1e-4, "examples": records}, indent=1) + "\n")
            files.insert(1, ex_file.name)
        published = publish(Path(tmp), Path(a.out), files)
    onnx_out, card_out = published[0], published[-1]
    print(f"converted: {onnx_out} ({how}, {arch}; {', '.join(notes) or 'no changes needed'})")
    print(f"card: {card_out} (demo: {str(demo).lower()}; {len(classes)} classes)")
    r = spec["resize"]
    size = (f"shorter side {r['shorter_side']}" if r["keep_aspect"]
            else f"{r['width']}x{r['height']}")
    crop = f", centre crop {width}x{height}" if spec.get("crop") else ""
    print(f"preprocessing: resize {size} ({r['filter']}){crop}, {spec['channel_order']}, "
          f"mean {spec['mean']}, std {spec['std']}, EXIF "
          f"{'applied' if spec['exif_orientation'] else 'ignored'}")
    line = f"parity: max |dp| {diff:.2e} on 16 random images, {source_kind} vs ONNX Runtime"
    if records:
        line += (f"; {metrics['parity_examples']['max_abs_prob_diff']:.2e} on {len(records)} "
                 "example images through the preprocessing")
    print(line)
    print(serve_hint(a.disease, "image", card_out))
    return onnx_out


__all__ = ["convert_image", "ConvertError"]
