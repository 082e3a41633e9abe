"""The converter on models it did not train, saved the ways people save them (made here, in the
test, small enough to be fast): each converts with parity, each malformed one gets one line that
says what was found and what to do, and nothing is written."""
import argparse
import json
import pickle
import subprocess
import sys

import joblib
import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch
import torchvision
import xgboost as xgb

from pipeline import common, convert, convert_tabular, tabular
from user_models import lively

PIMA_CARD = common.MODELS_DIR / "diabetes" / "tabular.card.json"
FEATURES = [
    {"name": "a", "unit": "mg/dL", "min": 0, "max": 10},
    {"name": "b", "unit": "1", "min": -5, "max": 5, "nullable": True},
    {"name": "c", "unit": "code", "min": 1, "max": 3, "integer": True, "allowed": [1, 2, 3]},
]
# Small inputs keep the image tests fast; the preprocessing is the torchvision kind.
TRANSFORM = ("Compose(\n    Resize(size=72, interpolation=bicubic, max_size=None, antialias=True)\n"
             "    CenterCrop(size=(64, 64))\n    ToTensor()\n"
             "    Normalize(mean=[0.5, 0.45, 0.4], std=[0.25, 0.2, 0.22])\n)")


def run(args, tmp_path):
    return convert.main([*args, "--out", str(tmp_path / "out")])


def refused(args, tmp_path, match):
    """One line, naming what was wrong; nothing written."""
    with pytest.raises(SystemExit) as e:
        run(args, tmp_path)
    msg = str(e.value.code)
    assert "\n" not in msg and msg.startswith("convert: "), msg
    assert any(m.lower() in msg.lower() for m in match.split("|")), msg
    assert not (tmp_path / "out").exists()
    return msg


# ---- XGBoost ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pima():
    """The Pima data read the usual way: pandas, named columns."""
    df = pd.read_csv(common.MODELS_DIR / "data" / "diabetes-pima.csv")
    return df.drop(columns=["Outcome"]), df["Outcome"]


def _fit(x, y, **kw):
    return xgb.XGBClassifier(n_estimators=25, max_depth=3, random_state=3, **kw).fit(x, y)


def test_the_finding_named_columns_failed_in_the_landed_export(tmp_path, pima):
    """What the landed converter did with a DataFrame-fitted classifier: onnxmltools raised
    the review's error."""
    x, y = pima
    with pytest.raises(RuntimeError, match="Unable to interpret 'Glucose'"):
        tabular.to_onnx(_fit(x, y), x.shape[1], tmp_path / "unused.onnx")


@pytest.mark.parametrize("fmt", ["json", "ubj", "pkl", "joblib"])
def test_named_column_xgboost_converts_with_the_card_features(tmp_path, pima, fmt):
    x, y = pima
    clf = _fit(x[list(reversed(x.columns))], y)  # a column order unlike the card's
    src = tmp_path / f"clf.{fmt}"
    if fmt == "pkl":
        src.write_bytes(pickle.dumps(clf))
    elif fmt == "joblib":
        joblib.dump(clf, src)
    else:
        clf.save_model(str(src))
    out = run(["xgboost", "--model", str(src), "--features", str(PIMA_CARD), "--trust-pickle",
               "--data", str(common.MODELS_DIR / "data" / "diabetes-pima.csv"),
               "--disease", "diabetes", "--model-id", "user-pima", "--classes", "no,yes"],
              tmp_path)
    card = json.loads(out.with_suffix(".card.json").read_text())
    assert card["sha256"] == common.sha256_file(out)
    assert [f["source_column"] for f in card["features"]] == list(reversed(x.columns))
    assert card["features"][0]["name"] == "age" and card["features"][-1]["name"] == "pregnancies"
    assert card["demo"] is True and "validation" not in card
    cols = list(reversed(x.columns))
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    p = sess.run(["probabilities"], {"features": x[cols].to_numpy(np.float32)})[0]
    assert np.abs(p - clf.predict_proba(x[cols])).max() <= 1e-5
    # A bare booster is explained: its trees beside the card, named with their hash, in the
    # card's feature order (the model's own column order).
    spec = card["explanation"]
    trees_path = out.parent / spec["file"]
    assert spec["method"] == "treeshap" and common.sha256_file(trees_path) == spec["sha256"]
    trees = json.loads(trees_path.read_text())
    assert trees["num_features"] == len(cols) and len(trees["trees"]) == 25
    base = clf.get_booster().predict(xgb.DMatrix(x[cols]), pred_contribs=True)
    assert abs(base[0, -1] - spec["base_value"]) <= 1e-5


@pytest.mark.parametrize("scaler", ["StandardScaler", "MinMaxScaler", "RobustScaler"])
def test_a_pipeline_with_a_scaler_is_exported_whole(tmp_path, pima, scaler):
    from sklearn import preprocessing
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline

    x, y = pima
    x = x.replace({"Insulin": {0: np.nan}, "SkinThickness": {0: np.nan}})
    pipe = make_pipeline(SimpleImputer(strategy="median"), getattr(preprocessing, scaler)(),
                         xgb.XGBClassifier(n_estimators=25, max_depth=3, random_state=3))
    pipe.fit(x, y)
    src = tmp_path / "pipe.joblib"
    joblib.dump(pipe, src)
    out = run(["xgboost", "--model", str(src), "--features", str(PIMA_CARD), "--trust-pickle",
               "--disease", "diabetes", "--model-id", "user-pipe", "--validation",
               "5-fold CV AUC 0.81 on our clinic's 2019-2024 cohort",
               "--risk-bands", "low<0.2,moderate<0.5,high"], tmp_path)
    card = json.loads(out.with_suffix(".card.json").read_text())
    assert card["framework"]["pipeline_steps"] == ["SimpleImputer", scaler]
    # The trees see scaled features: not explained (the services would walk them on raw ones).
    assert "explanation" not in card
    assert card["demo"] is False and "cohort" in card["validation"]["description"]
    assert card["risk"]["bands"] == [{"band": "low", "below": 0.2},
                                     {"band": "moderate", "below": 0.5},
                                     {"band": "high", "below": None}]
    # The steps run in float64, as scikit-learn runs them: the data's own rows (whose values
    # sit on the trees' thresholds) give the Pipeline's answers.
    assert card["input"]["dtype"] == "float64"
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    p = sess.run(["probabilities"], {"features": x.to_numpy(np.float64)})[0]
    assert np.abs(p - pipe.predict_proba(x)).max() <= 1e-5


@pytest.mark.parametrize("fmt", ["json", "ubj", "pkl"])
def test_unnamed_features_follow_the_features_file(tmp_path, fmt):
    rng = np.random.default_rng(7)
    x = convert_tabular.random_rows(FEATURES, 500, 1)
    y = ((np.nan_to_num(x[:, 1]) + x[:, 0] / 3 + (x[:, 2] == 2)) > 2).astype(int)
    y[rng.random(len(y)) < 0.1] ^= 1
    clf = _fit(x, y)
    src = tmp_path / f"model.{fmt}"
    src.write_bytes(pickle.dumps(clf)) if fmt == "pkl" else clf.save_model(str(src))
    feats = tmp_path / "features.json"
    feats.write_text(json.dumps(FEATURES))
    out = run(["xgboost", "--model", str(src), "--features", str(feats), "--trust-pickle",
               "--disease", "heart", "--model-id", "user-xgb", "--classes", "healthy,sick"],
              tmp_path)
    card = json.loads(out.with_suffix(".card.json").read_text())
    assert [f["name"] for f in card["features"]] == ["a", "b", "c"]
    assert card["features"][1]["nullable"] is True
    assert [c["label"] for c in card["classes"]] == ["healthy", "sick"]


def _features_without(name):
    feats = json.loads(PIMA_CARD.read_text())["features"]
    return [f for f in feats if f["name"] != name]


@pytest.mark.parametrize("case", ["pickle-untrusted", "column-unmatched", "extra-feature",
                                  "multiclass", "not-a-model", "unexportable-step",
                                  "count-mismatch", "bad-bands"])
def test_malformed_tabular_inputs_get_one_line(tmp_path, pima, case):
    x, y = pima
    src = tmp_path / "clf.json"
    feats = tmp_path / "features.json"
    feats.write_text(PIMA_CARD.read_text())
    args = ["xgboost", "--model", str(src), "--features", str(feats), "--disease", "diabetes",
            "--model-id", "u"]
    match = ""
    if case == "pickle-untrusted":
        src = tmp_path / "clf.pkl"
        src.write_bytes(pickle.dumps(_fit(x, y)))
        args[2], match = str(src), "runs code from the file|--trust-pickle"
    elif case == "column-unmatched":
        _fit(x.rename(columns={"Glucose": "PlasmaGlucose2h"}), y).save_model(str(src))
        match = "PlasmaGlucose2h have no feature"
    elif case == "extra-feature":
        _fit(x.drop(columns=["Insulin"]), y).save_model(str(src))
        match = "lists insulin, which the model does not take"
    elif case == "multiclass":
        _fit(x, (y + (x["Age"] > 40)).clip(0, 2)).save_model(str(src))
        match = "multi:softprob"
    elif case == "not-a-model":
        src.write_text('{"hello": 1}')
        match = "XGBoost cannot load it"
    elif case == "unexportable-step":
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import PolynomialFeatures

        src = tmp_path / "pipe.joblib"
        joblib.dump(make_pipeline(PolynomialFeatures(), _fit(np.zeros((2, 45)), [0, 1]))
                    .fit(x, y), src)
        args[2] = str(src)
        args.append("--trust-pickle")
        match = "PolynomialFeatures"
    elif case == "count-mismatch":
        _fit(x.to_numpy(), y).save_model(str(src))
        feats.write_text(json.dumps(_features_without("bmi")))
        match = "takes 8 features"
    elif case == "bad-bands":
        _fit(x, y).save_model(str(src))
        args += ["--risk-bands", "high,low<0.3"]
        match = "only the last band"
    refused(args, tmp_path, match)


# ---- images ----------------------------------------------------------------------------------

def _small(classes=3, seed=0):
    return lively("mobilenet_v3_small", classes, seed)


def _image_args(src, *extra, classes="x,y,z"):
    return ["image", "--model", str(src), "--classes", classes, "--disease", "heart",
            "--model-id", "user-cnn", "--transform", TRANSFORM, *extra]


def _check_parity(out, model, size=64):
    x = np.random.default_rng(1).normal(0, 1, (4, 3, size, size)).astype(np.float32)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = torch.softmax(model(torch.from_numpy(x)), 1).numpy()
    # The model's answers differ between images (the check could fail).
    assert np.abs(expected - expected[0]).max() > 1e-2
    got = common.softmax(np.concatenate(
        [sess.run(["logits"], {"image": x[i:i + 1]})[0] for i in range(len(x))]))
    assert np.abs(got - expected).max() <= 1e-4


def test_a_state_dict_converts_with_the_transform_it_was_trained_with(tmp_path):
    model = _small()
    src = tmp_path / "weights.pth"
    torch.save(model.state_dict(), src)
    out = run(_image_args(src, "--arch", "mobilenet_v3_small", "--risk-bands",
                          "low,moderate,high"), tmp_path)
    card = json.loads(out.with_suffix(".card.json").read_text())
    assert card["modality"] == "image" and card["demo"] is True
    assert card["input"]["shape"] == [-1, 3, 64, 64]
    pre = card["preprocessing"]
    assert pre["resize"] == {"shorter_side": 72, "filter": "bicubic_antialiased",
                             "keep_aspect": True}
    assert pre["crop"] == {"width": 64, "height": 64} and pre["mean"] == [0.5, 0.45, 0.4]
    assert [c["risk_band"] for c in card["classes"]] == ["low", "moderate", "high"]
    _check_parity(out, model)


def test_a_dataparallel_training_checkpoint_converts(tmp_path):
    """The review's shape: {"epoch", "model_state_dict": {"module.…"}, "optimizer"}."""
    model = _small()
    wrapped = torch.nn.DataParallel(model)
    opt = torch.optim.SGD(wrapped.parameters(), lr=0.1, momentum=0.9)
    wrapped(torch.zeros(2, 3, 64, 64)).sum().backward()
    opt.step()
    model.eval()
    src = tmp_path / "checkpoint.pth"
    torch.save({"epoch": 12, "model_state_dict": wrapped.state_dict(),
                "optimizer": opt.state_dict(), "best_acc": 0.91}, src)
    assert next(iter(torch.load(src)["model_state_dict"])).startswith("module.")
    out = run(_image_args(src, "--arch", "mobilenet_v3_small"), tmp_path)
    card = json.loads(out.with_suffix(".card.json").read_text())
    assert "model_state_dict" in card["framework"]["source"]
    assert any("module." in n for n in card["framework"]["conversion_notes"])
    _check_parity(out, model)


def test_a_whole_pickled_model_needs_trust_pickle(tmp_path):
    model = _small()
    src = tmp_path / "model.pt"
    torch.save(model, src)
    msg = refused(_image_args(src), tmp_path, "--trust-pickle")
    assert "runs code" in msg
    out = run(_image_args(src, "--trust-pickle"), tmp_path)
    assert json.loads(out.with_suffix(".card.json").read_text())["framework"]["source"] == \
        "a whole pickled model"
    _check_parity(out, model)


def test_a_torchscript_file_converts(tmp_path):
    model = _small()
    src = tmp_path / "model.ts"
    torch.jit.trace(model, torch.zeros(1, 3, 64, 64)).save(str(src))
    out = run(_image_args(src), tmp_path)
    assert json.loads(out.with_suffix(".card.json").read_text())["framework"]["source"] == \
        "a TorchScript file"
    _check_parity(out, model)


def test_a_users_onnx_file_is_adapted(tmp_path):
    """Exported by the user: their own tensor names, a fixed batch of 1, a final Softmax."""
    model = torch.nn.Sequential(_small(), torch.nn.Softmax(dim=1)).eval()
    src = tmp_path / "theirs.onnx"
    torch.onnx.export(model, (torch.zeros(1, 3, 64, 64),), str(src), input_names=["input"],
                      output_names=["probs"], opset_version=17, dynamo=False)
    out = run(_image_args(src), tmp_path)
    card = json.loads(out.with_suffix(".card.json").read_text())
    assert any("Softmax" in n for n in card["framework"]["conversion_notes"])
    x = np.random.default_rng(1).normal(0, 1, (1, 3, 64, 64)).astype(np.float32)
    theirs = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    ours = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert np.abs(common.softmax(ours.run(["logits"], {"image": x})[0])
                  - theirs.run(None, {"input": x})[0]).max() <= 1e-5


def test_timm_weights_map_onto_torchvision(tmp_path):
    import timm
    torch.manual_seed(0)
    theirs = timm.create_model("efficientnet_b0", pretrained=False, num_classes=4).train()
    with torch.no_grad():  # batch-norm statistics from random images, so outputs vary
        for m in theirs.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.momentum = None
        for _ in range(3):
            theirs(torch.randn(8, 3, 64, 64))
    theirs.eval()
    src = tmp_path / "timm.pth"
    torch.save(theirs.state_dict(), src)
    msg = refused(_image_args(src, "--arch", "efficientnet_b0", classes="a,b,c,d"), tmp_path,
                  "timm:efficientnet_b0")
    assert "look like timm weights" in msg
    out = run(_image_args(src, "--arch", "timm:efficientnet_b0", classes="a,b,c,d"), tmp_path)
    _check_parity(out, theirs)


def test_examples_are_checked_through_the_preprocessing_and_written(tmp_path):
    model = _small()
    src = tmp_path / "weights.pth"
    torch.save(model.state_dict(), src)
    examples = common.MODELS_DIR / "examples" / "retina"
    out = run(_image_args(src, "--arch", "mobilenet_v3_small", "--examples", str(examples)),
              tmp_path)
    ex = json.loads(out.with_name("image.examples.json").read_text())
    assert ex["model_sha256"] == common.sha256_file(out)
    assert len(ex["examples"]) == len(list(examples.glob("*.png")) + list(examples.glob("*.jpg")))
    from pipeline import preprocess

    card = json.loads(out.with_suffix(".card.json").read_text())
    first = ex["examples"][0]
    x = preprocess.preprocess_file(examples / first["file"], card["preprocessing"])
    with torch.no_grad():
        p = torch.softmax(model(torch.from_numpy(x)), 1).numpy()[0]
    assert np.abs(p - np.array(first["probabilities"])).max() <= 1e-4


@pytest.mark.parametrize("case", ["wrong-head", "wrong-arch", "unknown-keys", "no-state-dict",
                                  "not-torch", "no-preprocessing", "random-transform",
                                  "unknown-arch", "arch-needed", "onnx-size"])
def test_malformed_image_inputs_get_one_line(tmp_path, case):
    src = tmp_path / "weights.pth"
    sd = _small().state_dict()
    args = _image_args(src, "--arch", "mobilenet_v3_small")
    if case == "wrong-head":
        torch.save(_small(classes=5).state_dict(), src)
        match = "has 5 outputs but --classes names 3"
    elif case == "wrong-arch":
        torch.save(sd, src)
        args = _image_args(src, "--arch", "mobilenet_v3_large")
        match = "these weights fit mobilenet_v3_small"
    elif case == "unknown-keys":
        torch.save({**sd, "extra.weight": torch.zeros(3)}, src)
        match = "1 unknown keys (e.g. extra.weight)"
    elif case == "no-state-dict":
        torch.save({"epoch": 3, "history": {"loss": [1.0, 0.5]}}, src)
        match = "no state dict"
    elif case == "not-torch":
        src.write_bytes(b"\x00garbage" * 10)
        match = "not a PyTorch file|not a readable PyTorch file"
    elif case == "no-preprocessing":
        torch.save(sd, src)
        args = [a for a in args if a not in ("--transform", TRANSFORM)]
        match = "say how the training images were preprocessed"
    elif case == "random-transform":
        torch.save(sd, src)
        args[args.index(TRANSFORM)] = "RandomResizedCrop(224), ToTensor()"
        match = "random training augmentation"
    elif case == "unknown-arch":
        torch.save(sd, src)
        args = _image_args(src, "--arch", "resnet9000")
        match = "unknown architecture 'resnet9000'"
    elif case == "arch-needed":
        torch.save(sd, src)
        args = _image_args(src)
        match = "--arch"
    elif case == "onnx-size":
        src = tmp_path / "m.onnx"
        torch.onnx.export(_small(), (torch.zeros(1, 3, 96, 96),), str(src), opset_version=17,
                          dynamo=False)
        args = _image_args(src)
        match = "takes 96x96 images but the preprocessing gives 64x64"
    refused(args, tmp_path, match)


def test_the_command_line_prints_one_line_and_no_traceback(tmp_path):
    src = tmp_path / "weights.pth"
    torch.save(_small(classes=5).state_dict(), src)
    res = subprocess.run([sys.executable, "-m", "pipeline.convert", *_image_args(
        src, "--arch", "mobilenet_v3_small"), "--out", str(tmp_path / "out")],
        cwd=common.MODELS_DIR, capture_output=True, text=True)
    assert res.returncode == 1
    assert res.stderr.strip().count("\n") == 0 and "Traceback" not in res.stderr, res.stderr
    assert "5 outputs" in res.stderr and not (tmp_path / "out").exists()


def test_success_prints_the_card_parity_and_how_to_serve(tmp_path, capsys):
    src = tmp_path / "weights.pth"
    torch.save(_small().state_dict(), src)
    out = run(_image_args(src, "--arch", "mobilenet_v3_small"), tmp_path)
    text = capsys.readouterr().out
    card = out.with_suffix(".card.json").resolve()
    assert f"card: {card}" in text and "parity: max |dp|" in text
    assert f"HEART__MODELS__IMAGE__CARD={card}" in text


def test_transform_forms_people_paste():
    from pipeline.transforms import parse_transform

    v2 = ("Compose(\n      Resize(size=[256], interpolation=InterpolationMode.BILINEAR, "
          "antialias=True)\n      CenterCrop(size=(224, 224))\n      ToImage()\n"
          "      ToDtype(scale=True)\n      Normalize(mean=[0.485, 0.456, 0.406], "
          "std=[0.229, 0.224, 0.225], inplace=False)\n)")
    assert parse_transform(v2) == {"filter": "bilinear_antialiased", "shorter_side": 256,
                                   "crop": (224, 224), "scale": 1 / 255,
                                   "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    fixed = parse_transform("Resize((240, 320), interpolation=bicubic), ToTensor(), "
                            "Normalize([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])")
    assert fixed["size"] == (320, 240) and fixed["filter"] == "bicubic_antialiased"


def test_separate_options_make_the_same_spec():
    a = argparse.Namespace(transform=None, resize="256", crop="224", interpolation="bicubic",
                           mean=None, std=None, scale="1/255", channel_order="BGR",
                           no_exif_orientation=True)
    spec = convert.preprocessing_from_args(a)
    assert spec["resize"] == {"shorter_side": 256, "filter": "bicubic_antialiased",
                              "keep_aspect": True}
    assert spec["crop"] == {"width": 224, "height": 224} and spec["channel_order"] == "BGR"
    assert spec["exif_orientation"] is False and spec["scale"] == 1 / 255


def test_a_users_model_gets_an_int8_variant_with_its_card(tmp_path):
    """The quantizer on a converted user model, through the card's own preprocessing:
    calibration photos from a folder, labelled evaluation photos named <class>-*.png."""
    import shutil

    from pipeline import quantize

    src = tmp_path / "weights.pth"
    torch.save(_small(classes=5).state_dict(), src)
    out = run(["image", "--model", str(src), "--arch", "mobilenet_v3_small", "--classes",
               "a,b,c,d,e", "--risk-bands", "low,low,moderate,high,high", "--disease",
               "diabetes", "--model-id", "user-retina", "--transform", TRANSFORM], tmp_path)
    photos = tmp_path / "photos"
    photos.mkdir()
    for f in sorted((common.MODELS_DIR / "examples" / "retina").glob("*.png")):
        shutil.copy(f, photos / f.name)
    quantize.main(["--onnx", str(out), "--images", str(photos), "--eval-images", str(photos)])
    int8 = out.with_name(out.stem + ".int8.onnx")
    card = json.loads(int8.with_suffix(".card.json").read_text())
    assert card["model_id"] == "user-retina-int8"
    assert card["quantization"]["from"]["sha256"] == common.sha256_file(out)
    assert card["preprocessing"] == json.loads(out.with_suffix(".card.json").read_text())[
        "preprocessing"]
    assert card["metrics"]["compared_on"] == 5
    sess = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"])
    assert sess.run(["logits"], {"image": np.zeros((1, 3, 64, 64), np.float32)})[0].shape == (1, 5)


def test_a_converted_model_that_ends_in_pooling_and_one_layer_gains_class_activation_maps(tmp_path):
    """pipeline.cam on a user's converted ResNet: the maps' output is added, each map
    averages to its logit, the logits are unchanged and the card follows the new file; a model
    whose head is not global average pooling and one linear layer is refused."""
    from pipeline import cam

    model = lively("resnet18", 3, 0)
    src = tmp_path / "weights.pth"
    torch.save(model.state_dict(), src)
    out = run(_image_args(src, "--arch", "resnet18"), tmp_path)
    x = np.random.default_rng(2).normal(0, 1, (2, 3, 64, 64)).astype(np.float32)
    before = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(
        ["logits"], {"image": x})[0]
    cam.update(out)
    card = json.loads(out.with_suffix(".card.json").read_text())
    assert card["sha256"] == common.sha256_file(out)
    e = card["explanation"]
    assert e["method"] == "cam" and e["output"] == "cam" and e["grid"] == [2, 2]
    assert [o["name"] for o in card["outputs"]][-1] == "cam"
    logits, maps = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(
        ["logits", "cam"], {"image": x})
    assert maps.shape == (2, 3, 2, 2)
    assert np.abs(logits - before).max() == 0.0
    assert np.abs(maps.mean(axis=(2, 3)) - logits).max() <= 1e-4
    _check_parity(out, model)

    other = tmp_path / "other"
    other.mkdir()
    torch.save(_small().state_dict(), other / "weights.pth")
    small = run(_image_args(other / "weights.pth", "--arch", "mobilenet_v3_small"), other)
    with pytest.raises(SystemExit, match="global average pool|Gemm"):
        cam.update(small)
