"""Tabular models: XGBoost on the Pima and Cleveland data, exported to ONNX, checked, carded.

    python -m pipeline.tabular            # both
    python -m pipeline.tabular --only diabetes

Missing values are made explicit before training and passed to XGBoost as NaN, which learns a
default branch direction for them at every split; the ONNX export keeps those directions, so
the services pass a missing (null) field to the model as NaN too:
  * Pima: 0 in Glucose, BloodPressure, SkinThickness, Insulin or BMI means "not measured"
    (a living person has none of these at 0) -> NaN.
  * Cleveland: `?` (4 rows in ca, 2 in thal) -> NaN. The label is `num > 0`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from . import common

SEED = 42
PARAMS = dict(n_estimators=150, max_depth=3, learning_rate=0.05, subsample=0.8,
              colsample_bytree=0.8, min_child_weight=1.0, reg_lambda=1.0,
              eval_metric="logloss", random_state=SEED, n_jobs=2, tree_method="hist")
RISK_BANDS = [
    {"band": "low", "below": 0.3},
    {"band": "moderate", "below": 0.6},
    {"band": "high", "below": None},
]


def feat(name, column, unit, description, lo, hi, *, integer=False, allowed=None, nullable=False,
         zero_means_missing=False):
    return {"name": name, "source_column": column, "unit": unit, "description": description,
            "min": lo, "max": hi, "integer": integer, "allowed": allowed, "nullable": nullable,
            "zero_means_missing_in_training_data": zero_means_missing}


DATASETS = {
    "diabetes": {
        "csv": "diabetes-pima.csv",
        "target": "Outcome",
        "model_id": "diabetes-tabular-xgb",
        "classes": [("no_diabetes", "No diabetes within 5 years"),
                    ("diabetes", "Diabetes within 5 years")],
        "features": [
            feat("pregnancies", "Pregnancies", "count", "Number of times pregnant", 0, 20,
                 integer=True),
            feat("glucose", "Glucose", "mg/dL",
                 "Plasma glucose 2 h after a 75 g oral glucose tolerance test", 20, 600,
                 zero_means_missing=True),
            feat("blood_pressure", "BloodPressure", "mmHg", "Diastolic blood pressure", 20, 160,
                 zero_means_missing=True),
            feat("skin_thickness", "SkinThickness", "mm", "Triceps skin-fold thickness", 2, 100,
                 nullable=True, zero_means_missing=True),
            feat("insulin", "Insulin", "µU/mL", "2-hour serum insulin", 2, 1000, nullable=True,
                 zero_means_missing=True),
            feat("bmi", "BMI", "kg/m²", "Body mass index", 10, 80, zero_means_missing=True),
            feat("diabetes_pedigree_function", "DiabetesPedigreeFunction", "1",
                 "Diabetes pedigree function (family-history score)", 0.0, 3.0),
            feat("age", "Age", "years", "Age", 18, 120, integer=True),
        ],
        "population": "768 women of Pima Indian heritage, aged 21 or more (Arizona, USA)",
    },
    "heart": {
        "csv": "heart-cleveland.csv",
        "target": "num",
        "model_id": "heart-tabular-xgb",
        "classes": [("no_disease", "No coronary artery disease (< 50 % narrowing)"),
                    ("disease", "Coronary artery disease (> 50 % narrowing in a major vessel)")],
        "features": [
            feat("age", "age", "years", "Age", 18, 120, integer=True),
            feat("sex", "sex", "code", "Sex: 0 female, 1 male", 0, 1, integer=True,
                 allowed=[0, 1]),
            feat("cp", "cp", "code", "Chest pain: 1 typical angina, 2 atypical angina, "
                 "3 non-anginal pain, 4 asymptomatic", 1, 4, integer=True, allowed=[1, 2, 3, 4]),
            feat("trestbps", "trestbps", "mmHg", "Resting systolic blood pressure on admission",
                 60, 260),
            feat("chol", "chol", "mg/dL", "Serum cholesterol", 80, 700),
            feat("fbs", "fbs", "code", "Fasting blood sugar > 120 mg/dL: 1 yes, 0 no", 0, 1,
                 integer=True, allowed=[0, 1]),
            feat("restecg", "restecg", "code", "Resting ECG: 0 normal, 1 ST-T wave abnormality, "
                 "2 left ventricular hypertrophy", 0, 2, integer=True, allowed=[0, 1, 2]),
            feat("thalach", "thalach", "bpm", "Maximum heart rate achieved (exercise test)",
                 50, 250),
            feat("exang", "exang", "code", "Exercise-induced angina: 1 yes, 0 no", 0, 1,
                 integer=True, allowed=[0, 1]),
            feat("oldpeak", "oldpeak", "mm", "ST depression induced by exercise relative to rest",
                 0.0, 10.0),
            feat("slope", "slope", "code", "Slope of the peak exercise ST segment: 1 upsloping, "
                 "2 flat, 3 downsloping", 1, 3, integer=True, allowed=[1, 2, 3]),
            feat("ca", "ca", "count", "Major vessels (0-3) coloured by fluoroscopy", 0, 3,
                 integer=True, allowed=[0, 1, 2, 3], nullable=True),
            feat("thal", "thal", "code", "Thallium stress test: 3 normal, 6 fixed defect, "
                 "7 reversible defect", 3, 7, integer=True, allowed=[3, 6, 7], nullable=True),
        ],
        "population": "303 patients referred for coronary angiography, Cleveland Clinic, "
                      "1981-1984",
    },
}


def load(name: str) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Features as float32 with NaN for missing values, and the binary label."""
    cfg = DATASETS[name]
    df = pd.read_csv(common.MODELS_DIR / "data" / cfg["csv"], na_values=["?"])
    cols = [f["source_column"] for f in cfg["features"]]
    x = df[cols].astype(np.float64).copy()
    for f in cfg["features"]:
        if f["zero_means_missing_in_training_data"]:
            x.loc[x[f["source_column"]] == 0, f["source_column"]] = np.nan
    y = (df[cfg["target"]] > 0).astype(np.int64).to_numpy()
    return x.to_numpy(np.float32), y, df


def cross_validate(x, y) -> dict:
    import xgboost as xgb
    from sklearn.metrics import accuracy_score, brier_score_loss, roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    aucs, accs, briers = [], [], []
    for tr, te in StratifiedKFold(5, shuffle=True, random_state=SEED).split(x, y):
        m = xgb.XGBClassifier(**PARAMS).fit(x[tr], y[tr])
        p = m.predict_proba(x[te])[:, 1]
        aucs.append(roc_auc_score(y[te], p))
        accs.append(accuracy_score(y[te], p >= 0.5))
        briers.append(brier_score_loss(y[te], p))
    return {
        "cv": "stratified 5-fold, shuffled, seed 42; same hyper-parameters as the final model",
        "cv_roc_auc_mean": round(float(np.mean(aucs)), 4),
        "cv_roc_auc_std": round(float(np.std(aucs)), 4),
        "cv_roc_auc_folds": [round(float(a), 4) for a in aucs],
        "cv_accuracy_at_0_5_mean": round(float(np.mean(accs)), 4),
        "cv_brier_mean": round(float(np.mean(briers)), 4),
    }


def to_onnx(model, n_features: int, path: Path):
    """XGBClassifier -> ONNX with tensor outputs `label` [N] int64 and `probabilities` [N,2]."""
    from onnxmltools import convert_xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType

    # onnxmltools' XGBoost converter supports opsets up to 15 (ai.onnx) / 1 (ai.onnx.ml).
    onx = convert_xgboost(model, initial_types=[("features", FloatTensorType([None, n_features]))],
                          target_opset=15)
    names = [o.name for o in onx.graph.output]
    if names != ["label", "probabilities"]:
        raise SystemExit(f"unexpected ONNX outputs {names}: expected label, probabilities")
    path.write_bytes(onx.SerializeToString())


def parity(model, onnx_path: Path, x: np.ndarray, tol: float = 1e-5) -> float:
    """Max |p_xgboost - p_onnxruntime| over every row; fails the pipeline above `tol`."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    p_onnx = sess.run(["probabilities"], {"features": x})[0]
    diff = float(np.abs(model.predict_proba(x) - p_onnx).max())
    if not diff <= tol:
        raise SystemExit(f"{onnx_path}: XGBoost vs ONNX Runtime max |dp| {diff:.3e} > {tol}")
    return diff


def tabular_card(*, model_id, onnx_path, disease, features, classes, metrics, training,
                 framework, demo=False, notice=common.TABULAR_NOTICE, dtype="float32"):
    n = len(features)
    card = common.base_card(
        model_id=model_id, onnx_path=onnx_path, disease=disease, modality="tabular", demo=demo,
        notice=notice, framework=framework,
        input_spec={"name": "features", "shape": [-1, n], "dtype": dtype,
                    "missing_value": "NaN"},
        outputs=[{"name": "label", "shape": [-1], "dtype": "int64", "kind": "class index"},
                 {"name": "probabilities", "shape": [-1, len(classes)], "dtype": "float32",
                  "kind": "class probabilities"}],
        classes=[{"index": i, "label": l, "name": nm} for i, (l, nm) in enumerate(classes)],
    )
    card["features"] = features
    card["risk"] = {"positive_class": len(classes) - 1, "bands": RISK_BANDS,
                    "meaning": "band of the positive-class probability: the first band whose "
                               "`below` exceeds it"}
    card["training"] = training
    card["metrics"] = metrics
    card["load_cost"] = common.measure_load_rss(onnx_path, [-1, n], dtype)
    return card


def build(name: str):
    import xgboost as xgb

    cfg = DATASETS[name]
    x, y, df = load(name)
    metrics = cross_validate(x, y)
    model = xgb.XGBClassifier(**PARAMS).fit(x, y)
    out = common.MODELS_DIR / name / "tabular.onnx"
    out.parent.mkdir(exist_ok=True)
    to_onnx(model, x.shape[1], out)
    metrics["parity_rows"] = int(len(x))
    metrics["parity_max_abs_prob_diff_xgboost_vs_onnxruntime"] = parity(model, out, x)
    missing = {f["name"]: int(np.isnan(x[:, i]).sum()) for i, f in enumerate(cfg["features"])}
    training = {
        "data": f"models/data/{cfg['csv']} ({len(x)} rows, {int(y.sum())} positive)",
        "population": cfg["population"],
        "label": f"{cfg['target']} > 0",
        "missing_values_as_nan": {k: v for k, v in missing.items() if v},
        "hyperparameters": {k: v for k, v in PARAMS.items() if k != "n_jobs"},
    }
    card = tabular_card(model_id=cfg["model_id"], onnx_path=out, disease=name,
                        features=cfg["features"], classes=cfg["classes"], metrics=metrics,
                        training=training,
                        framework={"name": "xgboost", "estimator": "XGBClassifier",
                                   "versions": common.versions()})
    common.write_card(out, card)
    # The trees with their covers, for TreeSHAP explanations (the card's `explanation`).
    from . import explain_tabular
    explain_tabular.export(name)
    print(f"{name}: CV ROC AUC {metrics['cv_roc_auc_mean']:.3f} ± {metrics['cv_roc_auc_std']:.3f}, "
          f"parity {metrics['parity_max_abs_prob_diff_xgboost_vs_onnxruntime']:.2e}")
    return model


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--only", choices=list(DATASETS))
    a = ap.parse_args()
    for name in DATASETS:
        if a.only in (None, name):
            build(name)


if __name__ == "__main__":
    main()
