"""End to end: a user's own models, converted by `pipeline.convert`, served by the real
diabetes-svc binary (ONNX Runtime, the service's own image decoding and preprocessing) by
pointing it at their cards — its answers are the user's models' answers.

Needs the debug binaries (`cargo build --bins`; scripts/test.sh builds them first) and the
ONNX Runtime library (ORT_DYLIB_PATH, set by scripts/lib.sh)."""
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
import torch
import xgboost as xgb
from PIL import Image

from pipeline import common, convert, preprocess, preprocess_fixtures
from user_models import lively

REPO = common.MODELS_DIR.parent
TOKEN = "user-model-test-" + uuid.uuid4().hex


def _binary() -> Path:
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    path = Path(os.environ.get("MEDCHAIN_BIN_DIR", target / "debug")) / "diabetes-svc"
    assert path.is_file(), f"{path} is missing: build it with `cargo build --bins` first"
    lib = os.environ.get("ORT_DYLIB_PATH", "")
    assert Path(lib).is_file(), "ORT_DYLIB_PATH must name the ONNX Runtime library " \
                                "(source scripts/lib.sh)"
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _call(url, body=None, content_type="application/json"):
    req = urllib.request.Request(url, data=body, headers={"x-internal-token": TOKEN})
    if body is not None:
        req.add_header("content-type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _upload(url, path: Path):
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
            f"filename=\"{path.name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            ).encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    return _call(url, body, f"multipart/form-data; boundary={boundary}")


@pytest.fixture(scope="module")
def user_models(tmp_path_factory):
    """A clinic's two models, saved the usual ways, converted into one folder."""
    tmp = tmp_path_factory.mktemp("user-models")
    out = tmp / "cards"
    # Tabular: a scikit-learn Pipeline on the Pima CSV read with pandas, with its own bands.
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    df = pd.read_csv(common.MODELS_DIR / "data" / "diabetes-pima.csv")
    x = df.drop(columns=["Outcome"]).replace({"Insulin": {0: np.nan}, "SkinThickness": {0: np.nan}})
    pipe = make_pipeline(SimpleImputer(strategy="median"), StandardScaler(),
                         xgb.XGBClassifier(n_estimators=40, max_depth=3, random_state=5))
    pipe.fit(x, df["Outcome"])
    joblib.dump(pipe, tmp / "pima-pipeline.joblib")
    tab = convert.main(["xgboost", "--model", str(tmp / "pima-pipeline.joblib"), "--trust-pickle",
                        "--features", str(common.MODELS_DIR / "diabetes" / "tabular.card.json"),
                        "--disease", "diabetes", "--model-id", "clinic-pima", "--classes",
                        "healthy,diabetic", "--risk-bands", "low<0.25,watch<0.5,high",
                        "--validation", "internal hold-out, 2019-2024", "--out", str(out)])
    # Image: a DataParallel training checkpoint of a torchvision model with three grades,
    # trained on BGR input resized by the shorter side (bicubic) and centre-cropped.
    net = lively("mobilenet_v3_small", 3, seed=3, size=(64, 72))
    torch.save({"epoch": 30, "model_state_dict": torch.nn.DataParallel(net).state_dict()},
               tmp / "retina-ckpt.pth")
    examples = tmp / "examples"
    examples.mkdir()
    for f in sorted((common.MODELS_DIR / "examples" / "retina").glob("*.png"))[:3]:
        shutil.copy(f, examples / f.name)
    for name in ("landscape", "portrait", "sideways"):  # other aspects; one EXIF-rotated
        shutil.copy(preprocess_fixtures.FOLDER / f"{name}.png", examples / f"{name}.png")
    Image.open(examples / "landscape.png").resize((1500, 900)).save(examples / "large.png")
    img = convert.main(["image", "--model", str(tmp / "retina-ckpt.pth"), "--arch",
                        "mobilenet_v3_small", "--classes", "none,mild,severe", "--risk-bands",
                        "low,moderate,high", "--resize", "80", "--crop", "72x64",
                        "--interpolation", "bicubic", "--channel-order", "BGR", "--mean",
                        "0.4,0.45,0.5", "--std", "0.25,0.25,0.25", "--examples", str(examples),
                        "--disease", "diabetes", "--model-id", "clinic-retina", "--out", str(out)])
    return {"tabular": tab, "image": img, "pipeline": pipe, "x": x, "net": net,
            "examples": examples}


@pytest.fixture(scope="module")
def service(user_models, tmp_path_factory):
    port = _free_port()
    env = dict(os.environ,
               DIABETES__SERVER__PORT=str(port),
               DIABETES__MODELS__TABULAR__CARD=str(user_models["tabular"].with_suffix(
                   ".card.json")),
               DIABETES__MODELS__IMAGE__CARD=str(user_models["image"].with_suffix(".card.json")),
               DIABETES__CHAIN__URL="", DIABETES__TELEMETRY__FILTER="warn",
               DIABETES__AUTH__ACCEPT__GATEWAY=TOKEN,
               MEDCHAIN_DATA_DIR=str(tmp_path_factory.mktemp("data")))
    proc = subprocess.Popen([str(_binary())], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if _call(f"{base}/healthz")[0] == 200:
                break
        except OSError:
            pass
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "diabetes-svc did not start in 60 s"
        time.sleep(0.2)
    yield base
    proc.terminate()
    proc.wait(timeout=20)


def test_the_converted_pipeline_is_served_with_its_own_classes_and_bands(service, user_models):
    pipe, x = user_models["pipeline"], user_models["x"]
    feats = json.loads(user_models["tabular"].with_suffix(".card.json").read_text())["features"]
    names = {f["source_column"]: f["name"] for f in feats}
    # Rows the card accepts (the CSV's 0 "not measured" in blood pressure or BMI is out of range).
    valid = np.all([x[f["source_column"]].between(f["min"], f["max"]) |
                    (x[f["source_column"]].isna() & f["nullable"]) for f in feats], axis=0)
    rows = list(np.flatnonzero(valid)[::23])
    assert len(rows) >= 25
    want = pipe.predict_proba(x.iloc[rows])
    for r, p in zip(rows, want):
        record = {names[c]: (None if pd.isna(v) else float(v)) for c, v in x.iloc[r].items()}
        status, body = _call(f"{service}/v1/predict/tabular", json.dumps(record).encode())
        assert status == 200, body
        res = body["result"]
        got = [c["probability"] for c in res["probabilities"]]
        assert np.abs(np.array(got, float) - p).max() <= 1e-5, (r, got, p)
        assert res["label"] == ("healthy", "diabetic")[int(p[1] >= 0.5)]
        band = "low" if p[1] < 0.25 else "watch" if p[1] < 0.5 else "high"
        assert res["risk_band"] == band, body
        assert body["demo"] is False and body["model"]["id"] == "clinic-pima"


def test_the_converted_image_model_answers_as_the_users_model(service, user_models):
    card = json.loads(user_models["image"].with_suffix(".card.json").read_text())
    ex = json.loads(user_models["image"].with_name("image.examples.json").read_text())
    assert len(ex["examples"]) == 7
    net = user_models["net"]
    served = []
    for item in ex["examples"]:
        path = user_models["examples"] / item["file"]
        status, body = _upload(f"{service}/v1/predict/retina", path)
        assert status == 200, (item["file"], body)
        res = body["result"]
        got = [c["probability"] for c in res["probabilities"]]
        # The user's own network on the Python side of the same preprocessing.
        t = preprocess.preprocess_file(path, card["preprocessing"])
        with torch.no_grad():
            theirs = torch.softmax(net(torch.from_numpy(t)), 1).numpy()[0]
        assert np.abs(np.array(got) - theirs).max() <= 1e-4, (item["file"], got, theirs)
        assert np.abs(np.array(got) - item["probabilities"]).max() <= 1e-4
        assert res["label"] == ("none", "mild", "severe")[int(np.argmax(theirs))]
        assert res["risk_band"] == ("low", "moderate", "high")[int(np.argmax(theirs))]
        assert body["demo"] is True and body["model"]["id"] == "clinic-retina"
        assert "not for clinical use" in body["notice"]
        served.append(np.array(got))
    # The check can fail: preprocessing that differs in any one option (the landed services'
    # fixed preprocessing among them) gives other answers than the service's, far beyond the
    # tolerance, on some example.
    pre = card["preprocessing"]
    others = {
        "RGB": dict(pre, channel_order="RGB"),
        "bilinear": dict(pre, resize=dict(pre["resize"], filter="bilinear_antialiased")),
        "crop of another size": dict(pre, resize={"shorter_side": 81, **{
            k: v for k, v in pre["resize"].items() if k != "shorter_side"}}),
        "EXIF ignored": dict(pre, exif_orientation=False),
        "the landed fixed preprocessing": dict(preprocess.SPEC, resize=dict(
            preprocess.SPEC["resize"], width=72, height=64)),
    }
    for what, spec in others.items():
        worst = 0.0
        for item, got in zip(ex["examples"], served):
            t = preprocess.preprocess_file(user_models["examples"] / item["file"], spec)
            with torch.no_grad():
                p = torch.softmax(net(torch.from_numpy(t)), 1).numpy()[0]
            worst = max(worst, float(np.abs(p - got).max()))
        assert worst > 1e-3, f"{what}: the served answers do not tell it apart ({worst:.1e})"
