"""What the services need to explain a tabular prediction exactly (TreeSHAP), which the ONNX file
does not carry: the trees with each node's cover (the training rows' hessian sum that reached it),
the default branch for a missing value, and the base margin.

    python -m pipeline.explain_tabular            # both
    python -m pipeline.explain_tabular --only heart

For each tabular model it retrains the booster with the committed hyper-parameters (the same
model: its probabilities must match the committed ONNX file on every row to 1e-5, or nothing is
written) and writes, next to the model:
  * `tabular.trees.json`, the trees (format `medchain-xgboost-trees` 1), and the card's
    `explanation` entry naming it with its sha256 (the services verify it as they verify the model);
  * `models/examples/treeshap-<disease>.json`: every row of the data set with XGBoost's own
    `pred_contribs` for it, which the services' parity test compares with, to 1e-5.

The trees file: `base_margin` (the margin before any tree, logit of XGBoost's base score) and per
tree the arrays `left`, `right` (child node ids, -1 for a leaf), `feature`, `threshold` (go left
when value < threshold), `default_left` (where a missing value goes), `value` (leaf values) and
`cover`. Floats are float32 values written exactly.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from . import common, tabular

FORMAT = "medchain-xgboost-trees"
TOLERANCE = 1e-5


def trees_of(booster) -> dict:
    """The booster's trees in the services' format."""
    model = json.loads(booster.save_raw("json"))["learner"]
    objective = model["objective"]["name"]
    if objective != "binary:logistic":
        raise SystemExit(f"TreeSHAP export supports binary:logistic, not {objective}")
    param = model["learner_model_param"]
    base_score = float(json.loads(param["base_score"])[0]) if param["base_score"].startswith("[") \
        else float(param["base_score"])
    trees = []
    for t in model["gradient_booster"]["model"]["trees"]:
        if any(t["split_type"]):
            raise SystemExit("categorical splits are not supported")
        left, right = t["left_children"], t["right_children"]
        leaf = [l == -1 for l in left]
        trees.append({
            "left": left,
            "right": right,
            "feature": [0 if is_leaf else f for f, is_leaf in zip(t["split_indices"], leaf)],
            "threshold": [0.0 if is_leaf else c for c, is_leaf in zip(t["split_conditions"], leaf)],
            "default_left": [bool(d) and not is_leaf for d, is_leaf in zip(t["default_left"], leaf)],
            "value": [c if is_leaf else 0.0 for c, is_leaf in zip(t["split_conditions"], leaf)],
            "cover": t["sum_hessian"],
        })
    return {
        "format": FORMAT,
        "format_version": 1,
        "objective": objective,
        "link": "logit",
        "base_margin": math.log(base_score / (1.0 - base_score)),
        "num_features": int(param["num_feature"]),
        "trees": trees,
    }


def expected_value(tree: dict, node: int = 0) -> float:
    """The cover-weighted mean of a tree's leaves: what TreeSHAP's base value adds per tree."""
    if tree["left"][node] == -1:
        return tree["value"][node]
    l, r = tree["left"][node], tree["right"][node]
    cl, cr = tree["cover"][l], tree["cover"][r]
    return (cl * expected_value(tree, l) + cr * expected_value(tree, r)) / (cl + cr)


def write_trees(booster, x: np.ndarray, trees_path: Path) -> dict:
    """Writes the booster's trees to `trees_path` and gives the card's `explanation` entry,
    after checking them against XGBoost's `pred_contribs` on `x`: the bias column is the base
    margin plus each tree's expected value, and a row's contributions add up to its margin."""
    import xgboost as xgb

    trees = trees_of(booster)
    contribs = booster.predict(xgb.DMatrix(x), pred_contribs=True)
    margin = booster.predict(xgb.DMatrix(x), output_margin=True)
    base = trees["base_margin"] + sum(expected_value(t) for t in trees["trees"])
    if not abs(float(contribs[0, -1]) - base) <= TOLERANCE:
        raise SystemExit(f"base value {base} is not XGBoost's {contribs[0, -1]}")
    if not float(np.abs(contribs.sum(axis=1) - margin).max()) <= TOLERANCE:
        raise SystemExit("XGBoost's contributions do not add up to its margin")
    trees_path.write_text(json.dumps(trees, separators=(",", ":")) + "\n")
    return {
        "method": "treeshap",
        "file": trees_path.name,
        "sha256": common.sha256_file(trees_path),
        "size_bytes": trees_path.stat().st_size,
        "link": "logit",
        "base_value": base,
    }


def export(name: str) -> dict:
    import onnxruntime as ort
    import xgboost as xgb

    x, y, _ = tabular.load(name)
    model = xgb.XGBClassifier(**tabular.PARAMS).fit(x, y)
    onnx_path = common.MODELS_DIR / name / "tabular.onnx"
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    p_onnx = sess.run(["probabilities"], {"features": x})[0]
    diff = float(np.abs(model.predict_proba(x) - p_onnx).max())
    if not diff <= TOLERANCE:
        raise SystemExit(f"{name}: the retrained booster is not the committed model "
                         f"(max |dp| {diff:.2e} against {onnx_path})")
    booster = model.get_booster()
    trees_path = onnx_path.with_name("tabular.trees.json")
    entry = write_trees(booster, x, trees_path)
    entry["parity"] = {
        "reference": f"xgboost {xgb.__version__} Booster.predict(pred_contribs=True)",
        "rows": int(len(x)),
        "fixture": f"models/examples/treeshap-{name}.json",
        "tolerance": TOLERANCE,
    }
    card_path = onnx_path.with_suffix(".card.json")
    card = json.loads(card_path.read_text())
    card["explanation"] = entry
    common.write_card(onnx_path, card)
    contribs = booster.predict(xgb.DMatrix(x), pred_contribs=True)
    margin = booster.predict(xgb.DMatrix(x), output_margin=True)
    fixture = {
        "model_id": card["model_id"],
        "reference": entry["parity"]["reference"],
        "features": [f["name"] for f in card["features"]],
        "rows": [[None if math.isnan(v) else float(v) for v in row] for row in x],
        "contributions": [[float(c) for c in row[:-1]] for row in contribs],
        "base_values": [float(row[-1]) for row in contribs],
        "margins": [float(m) for m in margin],
    }
    dest = common.MODELS_DIR / "examples" / f"treeshap-{name}.json"
    dest.write_text(json.dumps(fixture, separators=(",", ":")) + "\n")
    print(f"{name}: wrote {trees_path} ({len(booster.get_dump())} trees) and {dest}")
    return card


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--only", choices=list(tabular.DATASETS))
    a = ap.parse_args()
    for name in tabular.DATASETS:
        if a.only in (None, name):
            export(name)


if __name__ == "__main__":
    main()
