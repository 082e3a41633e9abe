"""Bring your own model: convert it to ONNX, write its card, and run the parity check.

XGBoost (a JSON/UBJ booster saved with `save_model`, or a pickled sklearn-API XGBClassifier):

    python -m pipeline.convert xgboost --model my.json --features features.json \\
        --disease diabetes --model-id my-diabetes-xgb --out ../my-models/diabetes

torchvision architecture + state dict (`torch.save(model.state_dict(), "x.pth")`):

    python -m pipeline.convert torchvision --arch resnet50 --weights ecg.pth \\
        --classes normal,abnormal_heartbeat,myocardial_infarction,history_of_mi \\
        --disease heart --model-id my-heart-ecg --out ../my-models/heart

`features.json` lists the model's input columns in order, each with the fields the services
validate against: {"name", "unit", "min", "max"} and optionally "description", "integer",
"allowed" (list of codes), "nullable" (sent to the model as NaN when null).

The parity check compares the source framework with ONNX Runtime: XGBoost on `--data` rows (a
CSV with the feature columns) or on 2,000 random rows drawn inside the declared ranges (with
NaN in nullable columns), max |dp| <= 1e-5; torchvision on 16 random images, max |dp| <= 1e-4.
A failed check writes nothing.
"""

from __future__ import annotations

import argparse
import json
import pickle
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from . import common, tabular

FEATURE_KEYS = {"name", "unit", "min", "max", "description", "integer", "allowed", "nullable",
                "source_column", "zero_means_missing_in_training_data"}


def load_features(path: Path) -> list[dict]:
    raw = json.loads(Path(path).read_text())
    if not isinstance(raw, list) or not raw:
        raise SystemExit(f"{path}: expected a non-empty JSON list of feature objects")
    feats = []
    for i, f in enumerate(raw):
        if not isinstance(f, dict):
            raise SystemExit(f"{path}: feature {i} is not an object")
        missing = {"name", "unit", "min", "max"} - f.keys()
        if missing:
            raise SystemExit(f"{path}: feature {i} lacks {sorted(missing)}")
        unknown = f.keys() - FEATURE_KEYS
        if unknown:
            raise SystemExit(f"{path}: feature {f['name']!r} has unknown keys {sorted(unknown)}")
        if not f["min"] < f["max"]:
            raise SystemExit(f"{path}: feature {f['name']!r}: min must be below max")
        feats.append(tabular.feat(
            f["name"], f.get("source_column", f["name"]), f["unit"], f.get("description", ""),
            f["min"], f["max"], integer=bool(f.get("integer", False)), allowed=f.get("allowed"),
            nullable=bool(f.get("nullable", False)),
            zero_means_missing=bool(f.get("zero_means_missing_in_training_data", False))))
    names = [f["name"] for f in feats]
    if len(set(names)) != len(names):
        raise SystemExit(f"{path}: feature names must be unique")
    return feats


def load_xgboost(path: Path):
    import xgboost as xgb

    if path.suffix in (".pkl", ".pickle"):
        # Only unpickle files you trust: a pickle can run code when loaded.
        with open(path, "rb") as f:
            model = pickle.load(f)
        if not isinstance(model, xgb.XGBClassifier):
            raise SystemExit(f"{path}: expected a pickled xgboost.XGBClassifier, "
                             f"got {type(model).__name__}")
        return model
    model = xgb.XGBClassifier()
    model.load_model(str(path))
    return model


def random_rows(feats: list[dict], n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    cols = []
    for f in feats:
        if f.get("allowed"):
            c = rng.choice(np.array(f["allowed"], np.float64), n)
        else:
            c = rng.uniform(f["min"], f["max"], n)
            if f.get("integer"):
                c = np.round(c)
        if f.get("nullable"):
            c[rng.random(n) < 0.15] = np.nan
        cols.append(c)
    return np.stack(cols, 1).astype(np.float32)


def convert_xgboost(a) -> Path:
    import pandas as pd

    feats = load_features(a.features)
    model = load_xgboost(Path(a.model))
    n_model = getattr(model, "n_features_in_", None)
    if n_model is not None and n_model != len(feats):
        raise SystemExit(f"the model takes {n_model} features, {a.features} lists {len(feats)}")
    classes = [c.strip() for c in a.classes.split(",")] if a.classes else ["negative", "positive"]
    if len(classes) != 2:
        raise SystemExit("only binary classifiers are supported (two --classes)")
    if a.data:
        df = pd.read_csv(a.data, na_values=["?"])
        x = df[[f["source_column"] for f in feats]].to_numpy(np.float32)
        checked_on = f"{len(x)} rows of {Path(a.data).name}"
    else:
        x = random_rows(feats, 2000)
        checked_on = "2000 random rows inside the declared feature ranges"
    with tempfile.TemporaryDirectory() as tmp:
        onnx_tmp = Path(tmp) / "tabular.onnx"
        tabular.to_onnx(model, len(feats), onnx_tmp)
        diff = tabular.parity(model, onnx_tmp, x)
        out = Path(a.out) / f"{a.name or 'tabular'}.onnx"
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(onnx_tmp, out)
    card = tabular.tabular_card(
        model_id=a.model_id, onnx_path=out, disease=a.disease, features=feats,
        classes=[(c, c.replace("_", " ").capitalize()) for c in classes],
        metrics={"parity_max_abs_prob_diff_xgboost_vs_onnxruntime": diff,
                 "parity_checked_on": checked_on},
        training={"data": a.training_note or "provided by the model's owner (not recorded)"},
        framework={"name": "xgboost", "estimator": "XGBClassifier", "source_file": Path(a.model).name,
                   "converted_by": "models/pipeline/convert.py", "versions": common.versions()},
        demo=a.demo, notice=a.notice or (common.DEMO_NOTICE if a.demo else common.TABULAR_NOTICE))
    common.write_card(out, card)
    print(f"{out}: parity max |dp| {diff:.2e} on {checked_on}")
    return out


def convert_torchvision(a) -> Path:
    import onnxruntime as ort
    import torch
    import torchvision

    from . import images, preprocess

    classes = [c.strip() for c in a.classes.split(",") if c.strip()]
    if len(classes) < 2:
        raise SystemExit("--classes needs at least two comma-separated names")
    ctor = getattr(torchvision.models, a.arch, None)
    if ctor is None or not callable(ctor):
        raise SystemExit(f"torchvision.models has no architecture {a.arch!r}")
    model = ctor(weights=None, num_classes=len(classes))
    state = torch.load(a.weights, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise SystemExit(f"{a.weights} does not fit {a.arch} with {len(classes)} classes: {e}")
    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        onnx_tmp = Path(tmp) / "image.onnx"
        images.export_onnx(model, onnx_tmp, len(classes))
        x = np.random.default_rng(0).normal(0, 1, (16, 3, preprocess.SIZE, preprocess.SIZE))
        x = x.astype(np.float32)
        sess = ort.InferenceSession(str(onnx_tmp), providers=["CPUExecutionProvider"])
        with torch.no_grad():
            pt = torch.softmax(model(torch.from_numpy(x)), 1).numpy()
        po = common.softmax(sess.run(["logits"], {"image": x})[0])
        diff = float(np.abs(pt - po).max())
        if diff > 1e-4:
            raise SystemExit(f"parity check failed: torch vs ONNX Runtime max |dp| {diff:.2e}")
        out = Path(a.out) / f"{a.name or 'image'}.onnx"
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(onnx_tmp, out)
    bands = [b.strip() for b in a.risk_bands.split(",")] if a.risk_bands else ["unknown"] * len(classes)
    if len(bands) != len(classes):
        raise SystemExit("--risk-bands needs one band per class")
    card = common.image_card(
        model_id=a.model_id, onnx_path=out, arch=a.arch, labels=classes,
        names=[c.replace("_", " ").capitalize() for c in classes], risk_band_by_class=bands,
        metrics={"parity_max_abs_prob_diff_torch_vs_onnxruntime": diff,
                 "parity_checked_on": "16 random normalised images"},
        training={"data": a.training_note or "provided by the model's owner (not recorded)"},
        disease=a.disease, demo=a.demo,
        notice=a.notice or (common.DEMO_NOTICE if a.demo else
                            "Model supplied by its owner; see their documentation."),
        framework={"name": "pytorch", "architecture": f"torchvision.models.{a.arch}",
                   "source_file": Path(a.weights).name,
                   "converted_by": "models/pipeline/convert.py", "versions": common.versions()})
    common.write_card(out, card)
    print(f"{out}: parity max |dp| {diff:.2e}")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="kind", required=True)
    for name in ("xgboost", "torchvision"):
        p = sub.add_parser(name)
        p.add_argument("--disease", required=True, choices=["diabetes", "heart"])
        p.add_argument("--model-id", required=True)
        p.add_argument("--out", required=True, help="folder for <name>.onnx and <name>.card.json")
        p.add_argument("--name", help="file stem (default: tabular / image)")
        p.add_argument("--demo", action="store_true", help="mark the model as a demo model")
        p.add_argument("--notice", help="notice every response carries")
        p.add_argument("--training-note", help="training data provenance for the card")
    px = sub.choices["xgboost"]
    px.add_argument("--model", required=True, help="booster .json/.ubj or pickled classifier")
    px.add_argument("--features", required=True, help="features.json (see --help)")
    px.add_argument("--classes", help="two class labels, negative first (default negative,positive)")
    px.add_argument("--data", help="CSV to run the parity check on")
    pt = sub.choices["torchvision"]
    pt.add_argument("--arch", required=True, help="torchvision.models name, e.g. resnet50")
    pt.add_argument("--weights", required=True, help="state dict saved with torch.save")
    pt.add_argument("--classes", required=True, help="comma-separated class labels in order")
    pt.add_argument("--risk-bands", help="comma-separated risk band per class (low/moderate/high)")
    a = ap.parse_args(argv)
    return convert_xgboost(a) if a.kind == "xgboost" else convert_torchvision(a)


if __name__ == "__main__":
    main(sys.argv[1:])
