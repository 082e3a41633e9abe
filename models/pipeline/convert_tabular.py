"""`python -m pipeline.convert xgboost`: a user's XGBoost binary classifier, as they saved it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from . import common, tabular
from .convert import ConvertError, demo_and_notice, fail, publish, serve_hint, work_dir

FEATURE_KEYS = {"name", "unit", "min", "max", "description", "integer", "allowed", "nullable",
                "source_column", "zero_means_missing_in_training_data"}
PICKLES = (".pkl", ".pickle", ".joblib")
BOOSTERS = (".json", ".ubj")
# Pipeline steps before the classifier that are exported exactly (elementwise maps and a
# per-column fill of missing values, in float64, see `export`): anything else is refused.
EXPORTABLE_STEPS = ("StandardScaler", "MinMaxScaler", "MaxAbsScaler", "RobustScaler",
                    "SimpleImputer")


def _key(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", str(name).lower())


def load_features(path: Path) -> list[dict]:
    """A features list, or the `features` of a model card."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        fail(f"{path}: cannot read it as JSON ({e})")
    if isinstance(raw, dict) and isinstance(raw.get("features"), list):
        raw = raw["features"]
    if not isinstance(raw, list) or not raw:
        fail(f"{path}: expected a non-empty JSON list of feature objects (or a model card)")
    feats = []
    for i, f in enumerate(raw):
        if not isinstance(f, dict):
            fail(f"{path}: feature {i} is not an object")
        missing = {"name", "unit", "min", "max"} - f.keys()
        if missing:
            fail(f"{path}: feature {i} lacks {', '.join(sorted(missing))}")
        unknown = f.keys() - FEATURE_KEYS
        if unknown:
            fail(f"{path}: feature {f['name']!r} has unknown keys {', '.join(sorted(unknown))} "
                 f"(known: {', '.join(sorted(FEATURE_KEYS))})")
        if not f["min"] < f["max"]:
            fail(f"{path}: feature {f['name']!r}: min must be below max")
        feats.append(tabular.feat(
            f["name"], f.get("source_column") or f["name"], f["unit"], f.get("description", ""),
            f["min"], f["max"], integer=bool(f.get("integer", False)), allowed=f.get("allowed"),
            nullable=bool(f.get("nullable", False)),
            zero_means_missing=bool(f.get("zero_means_missing_in_training_data", False))))
    names = [f["name"] for f in feats]
    if len(set(names)) != len(names):
        fail(f"{path}: feature names must be unique")
    return feats


def load_model(path: Path, trust_pickle: bool):
    """The user's object: an XGBClassifier, a Booster, or a Pipeline ending in one."""
    import xgboost as xgb

    if not path.is_file():
        fail(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in PICKLES:
        if not trust_pickle:
            fail(f"{path} is a pickle: loading it runs code from the file. If you trust where it "
                 "came from, rerun with --trust-pickle; otherwise save the model with "
                 "model.save_model('model.json') and convert that")
        import joblib

        try:
            return joblib.load(path)
        except (ModuleNotFoundError, AttributeError) as e:
            fail(f"{path}: unpickling needs code that is not importable here ({e}); run the "
                 "converter where the classes it was saved from can be imported")
        except Exception as e:  # noqa: BLE001
            fail(f"{path}: not a readable pickle ({type(e).__name__}: {e})")
    if suffix in BOOSTERS:
        booster = xgb.Booster()
        try:
            booster.load_model(str(path))
        except xgb.core.XGBoostError as e:
            fail(f"{path}: XGBoost cannot load it as a saved booster "
                 f"({str(e).splitlines()[0][:160]})")
        return booster
    fail(f"{path}: unknown kind of file {suffix!r}; give a booster saved with save_model (.json, "
         f".ubj) or a pickle/joblib (.pkl, .pickle, .joblib)")


def split(model):
    """(steps before the classifier, the classifier's Booster, the model's column names)."""
    import xgboost as xgb

    steps, names = [], None
    if type(model).__name__ == "Pipeline" and hasattr(model, "steps"):
        *steps, (_, last) = model.steps
        names = getattr(model, "feature_names_in_", None)
        for step_name, step in steps:
            kind = type(step).__name__
            if step in (None, "passthrough"):
                continue
            if kind not in EXPORTABLE_STEPS:
                fail(f"the Pipeline's step {step_name!r} ({kind}) cannot be exported exactly; "
                     f"steps before the classifier may be {', '.join(EXPORTABLE_STEPS)} — refit "
                     "without it, or apply it before calling the service")
        model = last
    if isinstance(model, xgb.XGBClassifier):
        booster = model.get_booster()
    elif isinstance(model, xgb.Booster):
        booster = model
    else:
        fail(f"found a {type(model).__module__}.{type(model).__name__}; expected an "
             "xgboost.XGBClassifier, an xgboost.Booster or a scikit-learn Pipeline ending in an "
             "XGBClassifier")
    config = json.loads(booster.save_config())
    objective = config["learner"]["objective"]["name"]
    if objective != "binary:logistic":
        n = config["learner"]["learner_model_param"].get("num_class", "?")
        fail(f"the model's objective is {objective} (num_class {n}); only binary classifiers "
             "(binary:logistic) can be served: the services give a risk band of the positive "
             "class")
    if booster.feature_types and any(t == "c" for t in booster.feature_types):
        fail("the model has categorical features (enable_categorical): their splits cannot be "
             "exported to ONNX; one-hot encode them or use numeric codes")
    if names is None:
        names = booster.feature_names
    if names is not None and all(re.fullmatch(r"f\d+", str(n)) for n in names):
        names = None
    return [s for _, s in steps if s not in (None, "passthrough")], booster, (
        None if names is None else [str(n) for n in names])


def match_features(feats: list[dict], names: list[str] | None, n_model: int,
                   features_path) -> list[dict]:
    """The card's features in the model's column order."""
    if names is None:
        if n_model != len(feats):
            fail(f"the model takes {n_model} features, {features_path} lists {len(feats)}: "
                 "list the model's inputs in order")
        return feats
    by_key = {}
    for f in feats:
        for k in {_key(f["source_column"]), _key(f["name"])}:
            by_key.setdefault(k, f)
    ordered, missing = [], []
    for n in names:
        f = by_key.get(_key(n))
        if f is None:
            missing.append(n)
        else:
            ordered.append(dict(f, source_column=n))
    extra = [f["name"] for f in feats if f not in [by_key.get(_key(n)) for n in names]]
    if missing or extra:
        what = []
        if missing:
            what.append(f"the model's columns {', '.join(missing)} have no feature in "
                        f"{features_path}")
        if extra:
            what.append(f"{features_path} lists {', '.join(extra)}, which the model does not "
                        "take")
        fail("; ".join(what) + " — give each model column a feature (matched by source_column "
             "or name, ignoring case and punctuation)")
    if len({f["name"] for f in ordered}) != len(ordered):
        fail(f"two model columns matched the same feature of {features_path}")
    return ordered


def plain_classifier(booster):
    """The same trees as an XGBClassifier without column names (onnxmltools needs f0, f1...)."""
    import xgboost as xgb

    b = booster.copy()
    b.feature_names = None
    b.feature_types = None
    clf = xgb.XGBClassifier()
    clf.load_model(bytearray(b.save_raw("json")))
    return clf


def _step_ops(step, n: int, k: int) -> tuple[list, list]:
    """ONNX nodes and float64 initializers computing `step.transform` exactly as scikit-learn
    does on float64 input (the same IEEE operations in the same order), on tensor `x{k}` into
    `x{k+1}`."""
    from onnx import helper, numpy_helper

    kind = type(step).__name__
    ops, consts = [], []
    cur, out = f"x{k}", f"x{k + 1}"

    def const(name, v):
        v = np.broadcast_to(np.asarray(v, np.float64), (n,)).copy()
        consts.append(numpy_helper.from_array(v, f"{name}{k}"))
        return f"{name}{k}"

    def op(kind_, a, b, result):
        ops.append(helper.make_node(kind_, [a, b], [result]))
        return result

    if kind == "SimpleImputer":
        if not (isinstance(step.missing_values, float) and np.isnan(step.missing_values)):
            fail("the Pipeline's SimpleImputer fills values other than NaN; only NaN (missing) "
                 "can be exported")
        if step.add_indicator or np.isnan(step.statistics_).any():
            fail("the Pipeline's SimpleImputer adds or drops columns (add_indicator, or a column "
                 "with no values); refit without that")
        ops.append(helper.make_node("IsNaN", [cur], [f"nan{k}"]))
        ops.append(helper.make_node("Where", [f"nan{k}", const("fill", step.statistics_), cur],
                                    [out]))
        return ops, consts
    if kind in ("StandardScaler", "RobustScaler"):
        std = kind == "StandardScaler"
        center = (step.mean_ if step.with_mean else None) if std else (
            step.center_ if step.with_centering else None)
        scale = (step.scale_ if step.with_std else None) if std else (
            step.scale_ if step.with_scaling else None)
        mid = f"c{k}" if scale is not None else out
        if center is not None:
            cur = op("Sub", cur, const("center", center), mid)
        if scale is not None:
            cur = op("Div", cur, const("scale", scale), out)
        if cur != out:
            ops.append(helper.make_node("Identity", [cur], [out]))
        return ops, consts
    if kind == "MinMaxScaler":
        if step.clip:
            fail("the Pipeline's MinMaxScaler clips (clip=True); refit with clip=False")
        op("Mul", cur, const("scale", step.scale_), f"m{k}")
        op("Add", f"m{k}", const("min", step.min_), out)
        return ops, consts
    if kind == "MaxAbsScaler":
        op("Div", cur, const("scale", step.scale_), out)
        return ops, consts
    fail(f"{kind} cannot be exported")


def export(steps, clf, n: int, path: Path):
    """ONNX with input `features` [N,n] and outputs `label` [N], `probabilities` [N,2]. With
    Pipeline steps the input is float64 and the steps run in float64 before the cast to
    float32 the trees compare in — what scikit-learn does. (Measured on the Pima data, the
    other ways disagree with the Pipeline: ONNX's float32 scaler by up to 8.9e-2 on 2,000 random
    rows; the scaling folded into float32 thresholds by 0.43 on the data's own rows, whose values
    sit exactly on XGBoost's thresholds and are not float32 numbers.)"""
    tabular.to_onnx(clf, n, path)
    if not steps:
        return
    import onnx
    from onnx import TensorProto, helper

    m = onnx.load(str(path))
    g = m.graph
    for node in g.node:
        for i, v in enumerate(node.input):
            if v == "features":
                node.input[i] = f"x{len(steps)}_f32"
    nodes, consts = [], []
    for k, step in enumerate(steps):
        ops, c = _step_ops(step, n, k)
        nodes += ops
        consts += c
    nodes.append(helper.make_node("Cast", [f"x{len(steps)}"], [f"x{len(steps)}_f32"],
                                  to=TensorProto.FLOAT))
    nodes.append(helper.make_node("Identity", ["features"], ["x0"]))
    g.input.pop()
    g.input.append(helper.make_tensor_value_info("features", TensorProto.DOUBLE, [None, n]))
    old = list(g.node)
    del g.node[:]
    g.node.extend(nodes[-1:] + nodes[:-1] + old)
    g.initializer.extend(consts)
    if not any(o.domain in ("", "ai.onnx") for o in m.opset_import):
        m.opset_import.append(helper.make_opsetid("", 15))
    onnx.checker.check_model(m)
    path.write_bytes(m.SerializeToString())


def parse_bands(text: str | None) -> list[dict]:
    if not text:
        return tabular.RISK_BANDS
    bands, last = [], -1.0
    parts = [p.strip() for p in text.split(",") if p.strip()]
    for i, p in enumerate(parts):
        if "<" in p:
            name, below = (s.strip() for s in p.split("<", 1))
            try:
                below = float(below)
            except ValueError:
                fail(f"--risk-bands: {p!r} — write band<threshold, e.g. low<0.3")
            if not last < below <= 1:
                fail("--risk-bands: thresholds must rise and stay within (0, 1]")
            last = below
            bands.append({"band": name, "below": below})
        elif i == len(parts) - 1:
            bands.append({"band": p, "below": None})
        else:
            fail(f"--risk-bands: only the last band has no threshold ({p!r} is not last)")
    if not bands or bands[-1]["below"] is not None:
        fail("--risk-bands must end with an open band, e.g. 'low<0.3,moderate<0.6,high'")
    return bands


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


def parity_rows(a, feats) -> tuple[np.ndarray, str]:
    if not a.data:
        return (random_rows(feats, 2000).astype(np.float64),
                "2000 random rows inside the declared feature ranges")
    import pandas as pd

    df = pd.read_csv(a.data, na_values=["?"])
    cols = [f["source_column"] for f in feats]
    absent = [c for c in cols if c not in df.columns]
    if absent:
        fail(f"{a.data} has no column {', '.join(absent)} (it has {', '.join(df.columns[:20])})")
    x = df[cols].to_numpy(np.float64)
    for i, f in enumerate(feats):
        if f.get("zero_means_missing_in_training_data"):
            x[x[:, i] == 0, i] = np.nan
    return x, f"{len(x)} rows of {Path(a.data).name}"


def reference_probabilities(model, steps, clf, names, x: np.ndarray) -> np.ndarray:
    """What the user's own object predicts (the whole Pipeline, with its column names)."""
    import xgboost as xgb

    if type(model).__name__ == "Pipeline" or (names and isinstance(model, xgb.XGBClassifier)):
        import pandas as pd

        # As users call it: float64 columns (scalers compute in the input's precision).
        data = pd.DataFrame(x, columns=names) if names else x
        return np.asarray(model.predict_proba(data))
    if isinstance(model, xgb.Booster):
        p1 = model.predict(xgb.DMatrix(x, feature_names=names, missing=np.nan))
        return np.stack([1 - p1, p1], 1)
    return clf.predict_proba(x)


def explanation(steps, clf, x: np.ndarray, trees_path: Path) -> dict | str:
    """The card's `explanation` entry with the trees written for TreeSHAP, or why there is none:
    the services walk the trees on the features as sent, so a Pipeline's steps before them
    would have to be replayed first (not done), and only binary:logistic is explained."""
    from . import explain_tabular

    if steps:
        return "none (the trees follow Pipeline steps; only a bare booster is explained)"
    try:
        return explain_tabular.write_trees(clf.get_booster(), x.astype(np.float32), trees_path)
    except SystemExit as e:
        return f"none ({e})"


def convert_xgboost(a) -> Path:
    import onnxruntime as ort

    feats = load_features(Path(a.features))
    src = Path(a.model)
    model = load_model(src, a.trust_pickle)
    steps, booster, names = split(model)
    feats = match_features(feats, names, booster.num_features(), a.features)
    classes = [c.strip() for c in a.classes.split(",")] if a.classes else ["negative", "positive"]
    if len(classes) != 2 or not all(classes):
        fail("--classes: give exactly two labels, negative first (the model is binary)")
    bands = parse_bands(a.risk_bands)
    x, checked_on = parity_rows(a, feats)
    clf = plain_classifier(booster)
    expected = reference_probabilities(model, steps, clf, names, x)
    dtype = np.float64 if steps else np.float32
    name = a.name or "tabular"
    demo, notice, validation = demo_and_notice(a, common.TABULAR_NOTICE)
    with work_dir() as tmp:
        onnx_path = Path(tmp) / f"{name}.onnx"
        export(steps, clf, len(feats), onnx_path)
        sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        got = sess.run(["probabilities"], {"features": x.astype(dtype)})[0]
        diff = float(np.abs(got - expected).max())
        tol = 1e-5
        if not diff <= tol:
            worst = int(np.abs(got - expected).max(1).argmax())
            fail(f"parity check failed: ONNX Runtime differs from the model by {diff:.2e} "
                 f"(> {tol}) on {checked_on} (worst: row {worst}); nothing written")
        card = tabular.tabular_card(
            model_id=a.model_id, onnx_path=onnx_path, disease=a.disease, features=feats,
            classes=[(c, c.replace("_", " ").capitalize()) for c in classes],
            metrics={"parity_max_abs_prob_diff_source_vs_onnxruntime": diff,
                     "parity_checked_on": checked_on},
            training={"data": a.training_note or "provided by the model's owner (not recorded)"},
            framework={"name": "xgboost", "estimator": type(model).__name__,
                       "pipeline_steps": [type(s).__name__ for s in steps],
                       "source_file": src.name, "converted_by": "models/pipeline/convert.py",
                       "versions": common.versions()},
            demo=demo, notice=notice, dtype="float64" if steps else "float32")
        card["version"] = a.version
        card["risk"]["bands"] = bands
        if validation:
            card["validation"] = validation
        files = [onnx_path.name]
        explained = explanation(steps, clf, x, Path(tmp) / f"{name}.trees.json")
        if isinstance(explained, dict):
            card["explanation"] = explained
            files.append(explained["file"])
        common.write_card(onnx_path, card, quiet=True)
        onnx_out, *_, card_out = publish(Path(tmp), Path(a.out),
                                         files + [onnx_path.with_suffix(".card.json").name])
    cols = ", ".join(f"{f['source_column']}→{f['name']}" for f in feats)
    print(f"converted: {onnx_out} ({len(feats)} features: {cols})")
    print(f"card: {card_out} (demo: {str(demo).lower()})")
    print(f"parity: max |dp| {diff:.2e} on {checked_on}, model vs ONNX Runtime")
    print(f"explanations: {'TreeSHAP, ' + explained['file'] if isinstance(explained, dict) else explained}")
    print(serve_hint(a.disease, "tabular", card_out))
    return onnx_out
