"""The converter takes models it did not train (made here, in the test) and checks parity."""
import json
import pickle

import numpy as np
import onnxruntime as ort
import pytest
import xgboost as xgb

from pipeline import common, convert

FEATURES = [
    {"name": "a", "unit": "mg/dL", "min": 0, "max": 10},
    {"name": "b", "unit": "1", "min": -5, "max": 5, "nullable": True},
    {"name": "c", "unit": "code", "min": 1, "max": 3, "integer": True, "allowed": [1, 2, 3]},
]


def _fresh_classifier():
    rng = np.random.default_rng(7)
    x = convert.random_rows([dict(f, nullable=f.get("nullable", False)) for f in FEATURES], 500, 1)
    y = ((np.nan_to_num(x[:, 1]) + x[:, 0] / 3 + (x[:, 2] == 2)) > 2).astype(int)
    y[rng.random(len(y)) < 0.1] ^= 1
    return xgb.XGBClassifier(n_estimators=30, max_depth=3, random_state=3).fit(x, y), x


@pytest.mark.parametrize("fmt", ["json", "ubj", "pkl"])
def test_xgboost_booster_and_pickle_convert_with_parity(tmp_path, fmt):
    clf, x = _fresh_classifier()
    src = tmp_path / f"model.{fmt}"
    if fmt == "pkl":
        src.write_bytes(pickle.dumps(clf))
    else:
        clf.save_model(str(src))
    feats = tmp_path / "features.json"
    feats.write_text(json.dumps(FEATURES))
    out = convert.main(["xgboost", "--model", str(src), "--features", str(feats),
                        "--disease", "diabetes", "--model-id", "user-xgb", "--out",
                        str(tmp_path / "out"), "--classes", "healthy,sick"])
    card = json.loads(out.with_suffix(".card.json").read_text())
    assert card["sha256"] == common.sha256_file(out)
    assert [f["name"] for f in card["features"]] == ["a", "b", "c"]
    assert card["features"][1]["nullable"] is True
    assert [c["label"] for c in card["classes"]] == ["healthy", "sick"]
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    p = sess.run(["probabilities"], {"features": x})[0]
    assert np.abs(p - clf.predict_proba(x)).max() <= 1e-5


def test_feature_count_mismatch_is_refused(tmp_path):
    clf, _ = _fresh_classifier()
    src = tmp_path / "model.json"
    clf.save_model(str(src))
    feats = tmp_path / "features.json"
    feats.write_text(json.dumps(FEATURES[:2]))
    with pytest.raises(SystemExit, match="takes 3 features"):
        convert.main(["xgboost", "--model", str(src), "--features", str(feats), "--disease",
                      "heart", "--model-id", "x", "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_torchvision_state_dict_converts_with_parity(tmp_path):
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(weights=None, num_classes=3)
    model.eval()
    src = tmp_path / "weights.pth"
    torch.save(model.state_dict(), src)
    out = convert.main(["torchvision", "--arch", "mobilenet_v3_small", "--weights", str(src),
                        "--classes", "x,y,z", "--risk-bands", "low,moderate,high",
                        "--disease", "heart", "--model-id", "user-cnn", "--demo",
                        "--out", str(tmp_path / "out")])
    card = json.loads(out.with_suffix(".card.json").read_text())
    assert card["modality"] == "image" and card["demo"] is True
    assert card["input"]["shape"] == [-1, 3, 224, 224]
    assert [c["risk_band"] for c in card["classes"]] == ["low", "moderate", "high"]
    x = np.random.default_rng(1).normal(0, 1, (2, 3, 224, 224)).astype(np.float32)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = torch.softmax(model(torch.from_numpy(x)), 1).numpy()
    assert np.abs(common.softmax(sess.run(["logits"], {"image": x})[0]) - expected).max() <= 1e-4


def test_wrong_state_dict_is_refused(tmp_path):
    import torch
    import torchvision

    src = tmp_path / "weights.pth"
    torch.save(torchvision.models.mobilenet_v3_small(weights=None, num_classes=5).state_dict(), src)
    with pytest.raises(SystemExit, match="does not fit"):
        convert.main(["torchvision", "--arch", "mobilenet_v3_small", "--weights", str(src),
                      "--classes", "x,y,z", "--disease", "heart", "--model-id", "u",
                      "--out", str(tmp_path / "out")])


def test_a_users_model_gets_an_int8_variant_with_its_card(tmp_path):
    """The quantizer on a converted user model: calibration photos from a folder, labelled
    evaluation photos named <class>-*.png, a card naming its parent and the comparison."""
    import shutil

    import torch
    import torchvision

    from pipeline import quantize

    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(weights=None, num_classes=5)
    src = tmp_path / "weights.pth"
    torch.save(model.state_dict(), src)
    out = convert.main(["torchvision", "--arch", "mobilenet_v3_small", "--weights", str(src),
                        "--classes", "a,b,c,d,e", "--risk-bands", "low,low,moderate,high,high",
                        "--disease", "diabetes", "--model-id", "user-retina", "--demo",
                        "--out", str(tmp_path / "out")])
    photos = tmp_path / "photos"
    photos.mkdir()
    for f in sorted((common.MODELS_DIR / "examples" / "retina").glob("*.png")):
        shutil.copy(f, photos / f.name)
    quantize.main(["--onnx", str(out), "--images", str(photos), "--eval-images", str(photos)])
    int8 = out.with_name(out.stem + ".int8.onnx")
    card = json.loads(int8.with_suffix(".card.json").read_text())
    assert card["model_id"] == "user-retina-int8"
    assert card["quantization"]["from"]["sha256"] == common.sha256_file(out)
    assert card["sha256"] == common.sha256_file(int8)
    assert card["metrics"]["compared_on"] == 5
    assert 0 <= card["metrics"]["agreement_with_fp32"] <= 1
    assert "accuracy_int8" in card["metrics"]
    sess = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"])
    assert sess.run(["logits"], {"image": np.zeros((1, 3, 224, 224), np.float32)})[0].shape == (1, 5)
