"""Bring your own model: convert it to ONNX, write its card, check parity, print how to serve it.

Tabular — an XGBoost binary classifier, as people save one:

    python -m pipeline.convert xgboost --model clf.pkl --trust-pickle \\
        --features ../models/diabetes/tabular.card.json --data pima.csv \\
        --disease diabetes --model-id my-diabetes-xgb --out ../my-models/diabetes

  --model: a booster saved with `save_model` (.json, .ubj), or a pickle/joblib (.pkl, .pickle,
  .joblib) of an XGBClassifier, a Booster, or a scikit-learn Pipeline ending in an
  XGBClassifier (StandardScaler, MinMaxScaler, MaxAbsScaler, RobustScaler and SimpleImputer steps
  before it are exported too, computed in float64 as scikit-learn does; any other step is
  refused with the reason).
  --features: a JSON list of features, or a model card whose `features` to use. Each feature:
  {"name", "unit", "min", "max"} and optionally "description", "integer", "allowed" (codes),
  "nullable" (sent to the model as NaN when null) and "source_column" (the model's or CSV's
  column name). A model trained on named columns (a pandas DataFrame) is matched by name:
  each model column to the feature whose source_column or name is the same, ignoring case and
  punctuation (`BloodPressure` = `blood_pressure`); the card lists them in the model's order.

Image — a PyTorch or ONNX image classifier:

    python -m pipeline.convert image --model checkpoint.pth --arch resnet50 \\
        --classes normal,abnormal_heartbeat,myocardial_infarction,history_of_mi \\
        --transform "Resize(256), CenterCrop(224), ToTensor(), Normalize(mean=[0.485, 0.456, \\
        0.406], std=[0.229, 0.224, 0.225])" \\
        --disease heart --model-id my-heart-ecg --out ../my-models/heart

  --model: a state dict or a training checkpoint (`state_dict`, `model_state_dict`, `model`,
  ... ; `module.` and other wrapper prefixes are stripped; the head size is read from the
  weights), a TorchScript file, an ONNX file, or — only with --trust-pickle, since unpickling
  runs code from the file — a whole pickled model (`torch.save(model)`).
  --arch: a torchvision architecture (resnet50, efficientnet_b0, ...) or a timm name of the same
  families (`timm:efficientnet_b0`; timm names are mapped to torchvision's, tensor by tensor).
  Preprocessing as trained, either `--transform` (what `print(transform)` shows for a
  torchvision Compose, or its shorthand as above) or `--resize`, `--crop`, `--interpolation`,
  `--mean`, `--std`, `--scale`, `--channel-order`, `--no-exif-orientation`.

The card says `demo: true` unless `--validation "how it was validated"` is given.

Parity: XGBoost (or the whole Pipeline) vs ONNX Runtime on `--data` rows or 2,000 random rows
inside the declared ranges, max |dp| <= 1e-5;
PyTorch vs ONNX Runtime on 16 random images, max |dp| <= 1e-4, and on `--examples` images
through the card's preprocessing, whose probabilities are written next to the card
(`<name>.examples.json`) so the service can be checked against them.

Every failure is one line saying what was found and what to do, and writes nothing.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import traceback
from pathlib import Path

from . import preprocess


class ConvertError(Exception):
    """A failure the user can act on: one line, what was found and what to do."""


def fail(msg: str):
    raise ConvertError(msg)


ENV_PREFIX = {"diabetes": "DIABETES", "heart": "HEART"}


def one_line(text: str, limit: int = 500) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def publish(tmp: Path, out: Path, names: list[str]) -> list[Path]:
    """Moves the finished files from `tmp` into `out` (model first, card last)."""
    out.mkdir(parents=True, exist_ok=True)
    done = []
    for name in names:
        dest = out / name
        shutil.move(str(tmp / name), str(dest))
        done.append(dest.resolve())
    return done


def serve_hint(disease: str, slot: str, card: Path) -> str:
    env = f"{ENV_PREFIX[disease]}__MODELS__{slot.upper()}__CARD={card}"
    svc = f"{disease}-svc"
    return f"serve it: {env} (for {svc}; or models.{slot}.card in its config file)"


# ---- preprocessing options ---------------------------------------------------------------



def _size(text: str, what: str) -> tuple[int, int] | int:
    """`224` -> 224, `224x192` (width x height) -> (224, 192)."""
    t = text.strip().lower().replace(" ", "")
    try:
        if "x" in t:
            w, h = t.split("x")
            return int(w), int(h)
        return int(t)
    except ValueError:
        fail(f"{what} {text!r} is not a size: give N or WIDTHxHEIGHT, e.g. 224 or 224x224")


def _triple(text: str, what: str) -> tuple[float, float, float]:
    try:
        v = tuple(float(p) for p in text.replace("[", "").replace("]", "").split(","))
    except ValueError:
        fail(f"{what} {text!r}: give three comma-separated numbers, e.g. 0.485,0.456,0.406")
    if len(v) != 3:
        fail(f"{what} {text!r}: give three comma-separated numbers (one per channel)")
    return v


def _scale(text: str) -> float:
    t = text.strip()
    try:
        if "/" in t:
            a, b = t.split("/")
            return float(a) / float(b)
        return float(t)
    except (ValueError, ZeroDivisionError):
        fail(f"--scale {text!r}: give a number or a fraction such as 1/255")


def preprocessing_from_args(a) -> dict | None:
    """The card's preprocessing from --transform or the separate options; None if neither."""
    separate = any(getattr(a, k) is not None for k in
                   ("resize", "crop", "interpolation", "mean", "std", "scale", "channel_order"))
    if a.transform and separate:
        fail("give either --transform or --resize/--crop/--interpolation/--mean/--std/--scale/"
             "--channel-order, not both")
    if a.transform:
        from .transforms import parse_transform

        text = a.transform
        if text.startswith("@"):
            text = Path(text[1:]).read_text()
        args = parse_transform(text)
    elif a.resize is not None:
        size = _size(a.resize, "--resize")
        args = {"size": size} if isinstance(size, tuple) else {"shorter_side": size}
        if a.crop is not None:
            crop = _size(a.crop, "--crop")
            args["crop"] = crop if isinstance(crop, tuple) else (crop, crop)
        if a.interpolation is not None:
            args["filter"] = preprocess.INTERPOLATIONS[a.interpolation]
        if a.mean is not None:
            args["mean"] = _triple(a.mean, "--mean")
        if a.std is not None:
            args["std"] = _triple(a.std, "--std")
        if a.scale is not None:
            args["scale"] = _scale(a.scale)
        if a.channel_order is not None:
            args["channel_order"] = a.channel_order
    elif separate:
        fail("--crop/--interpolation/--mean/--std/--scale/--channel-order need --resize "
             "(N for the shorter side, WIDTHxHEIGHT for a fixed size)")
    else:
        return None
    args["exif_orientation"] = not a.no_exif_orientation
    try:
        return preprocess.make_spec(**args)
    except ValueError as e:
        fail(f"preprocessing: {e}")


# ---- command line ----------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m pipeline.convert", description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--traceback", action="store_true",
                    help="on an unexpected failure, print the Python traceback too")
    sub = ap.add_subparsers(dest="kind", required=True)
    px = sub.add_parser("xgboost", help="an XGBoost binary classifier")
    pi = sub.add_parser("image", aliases=["torchvision"], help="a PyTorch or ONNX image model")
    for p in (px, pi):
        p.add_argument("--disease", required=True, choices=sorted(ENV_PREFIX))
        p.add_argument("--model-id", required=True)
        p.add_argument("--out", required=True, help="folder for <name>.onnx and <name>.card.json")
        p.add_argument("--name", help="file stem (default: tabular / image)")
        p.add_argument("--version", default="1.0.0", help="the model's version (default 1.0.0)")
        p.add_argument("--validation",
                       help="how the model was validated; without it the card says demo: true")
        p.add_argument("--notice", help="notice every response carries")
        p.add_argument("--training-note", help="training data provenance for the card")
        p.add_argument("--trust-pickle", action="store_true",
                       help="allow unpickling MODEL: it runs code from the file; only for "
                            "files you trust")
    px.add_argument("--model", required=True, help=".json/.ubj booster or .pkl/.joblib pickle")
    px.add_argument("--features", required=True, help="features.json or a model card")
    px.add_argument("--classes", help="two class labels, negative first (default "
                                      "negative,positive)")
    px.add_argument("--risk-bands", help="bands of the positive-class probability, e.g. "
                                         "'low<0.3,moderate<0.6,high' (the default)")
    px.add_argument("--data", help="CSV to run the parity check on (feature columns by "
                                   "source_column)")
    pi.add_argument("--model", "--weights", dest="model", required=True,
                    help=".pth/.pt/.ckpt state dict or checkpoint, TorchScript, or .onnx")
    pi.add_argument("--arch", help="torchvision architecture or timm:<name> (not needed for "
                                   "TorchScript, ONNX or a trusted whole model)")
    pi.add_argument("--classes", required=True, help="comma-separated class labels in order")
    pi.add_argument("--names", help="comma-separated display names (default from the labels)")
    pi.add_argument("--risk-bands", help="comma-separated risk band per class (low/moderate/"
                                         "high); default unknown")
    pi.add_argument("--examples", help="folder of example images: parity through the "
                                       "preprocessing, and <name>.examples.json for the service")
    pi.add_argument("--transform", help="the torchvision eval transform as print() shows it "
                                        "(or @file)")
    pi.add_argument("--resize", help="N: shorter side to N (aspect kept); WxH: whole image")
    pi.add_argument("--crop", help="centre crop N or WxH after the resize")
    pi.add_argument("--interpolation", choices=sorted(preprocess.INTERPOLATIONS),
                    help="Pillow filter of the resize (default bilinear)")
    pi.add_argument("--mean", help="per-channel mean after scaling (default ImageNet)")
    pi.add_argument("--std", help="per-channel std after scaling (default ImageNet)")
    pi.add_argument("--scale", help="factor applied to 0..255 pixel values (default 1/255)")
    pi.add_argument("--channel-order", choices=["RGB", "BGR"])
    pi.add_argument("--no-exif-orientation", action="store_true",
                    help="the model was trained on images not turned by their EXIF orientation")
    return ap


def run(a) -> Path:
    if a.kind == "xgboost":
        from .convert_tabular import convert_xgboost

        return convert_xgboost(a)
    from .convert_image import convert_image

    return convert_image(a)


def main(argv=None) -> Path:
    """Runs the converter; every failure raises SystemExit with one line (nothing written)."""
    a = parser().parse_args(argv)
    try:
        return run(a)
    except ConvertError as e:
        raise SystemExit(f"convert: {one_line(e)}") from None
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # noqa: BLE001 — the user gets one line, never a traceback dump
        if a.traceback:
            traceback.print_exc()
        raise SystemExit(f"convert: unexpected {type(e).__name__}: {one_line(e, 300)} "
                         f"(rerun with --traceback for where it happened)") from None


def work_dir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="medchain-convert-")


def demo_and_notice(a, default_notice: str) -> tuple[bool, str, dict | None]:
    """A model is `demo: false` only when its owner says how it was validated."""
    if a.validation:
        validation = {"description": a.validation, "stated_by": "the model's owner"}
        return False, a.notice or default_notice, validation
    return True, a.notice or UNVALIDATED_NOTICE, None


UNVALIDATED_NOTICE = ("Demo model: supplied by its owner without a stated validation; not for "
                      "clinical use. Its outputs say nothing about a real patient.")


if __name__ == "__main__":
    # Through the package, so that the other modules' ConvertError is the one caught.
    from pipeline.convert import main as package_main

    package_main(sys.argv[1:])
