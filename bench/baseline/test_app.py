"""The Python baseline answers as medchain does: it runs as a real uvicorn server on loopback,
and its probabilities equal the committed fixtures (which medchain's parity tests hold the
services to) within the fixtures' tolerances; bad input gets a 4xx naming what is wrong. A
baseline that computed something else would make the benchmark's comparison meaningless."""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
FIXTURES = json.loads((MODELS / "examples/fixtures.json").read_text())


@pytest.fixture(scope="module")
def base():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    env = dict(os.environ, BASELINE_MODELS_DIR=str(MODELS))
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app:app", "--app-dir", str(ROOT / "bench/baseline"),
         "--fd", str(sock.fileno()), "--log-level", "warning"],
        env=env, pass_fds=[sock.fileno()],
    )
    sock.close()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as r:
                assert r.status == 200
                break
        except (urllib.error.URLError, ConnectionError):
            assert proc.poll() is None, "the baseline exited while starting"
            assert time.monotonic() < deadline, "the baseline did not start in 120 s"
            time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def post(url: str, body: bytes, content_type: str) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def upload(url: str, data: bytes) -> tuple[int, dict]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"f\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + data + \
        f"\r\n--{boundary}--\r\n".encode()
    return post(url, body, f"multipart/form-data; boundary={boundary}")


def card_sha(disease: str, model: str) -> str:
    return json.loads((MODELS / f"{disease}/{model}.card.json").read_text())["sha256"]


def test_tabular_answers_equal_the_fixtures(base):
    rows = FIXTURES["tabular"]
    assert len(rows) >= 10
    for row in rows:
        assert row["model_sha256"] == card_sha(row["disease"], "tabular"), "fixtures are current"
        status, v = post(f"{base}/predict/{row['disease']}/tabular",
                         json.dumps(row["input"]).encode(), "application/json")
        assert status == 200, v
        for got, want in zip(v["probabilities"], row["probabilities"], strict=True):
            assert abs(got - want) <= FIXTURES["tolerance"], (row, v)
        assert v["notice"], "demo models say so in every response"


def test_image_answers_equal_the_fixtures(base):
    checked = 0
    for row in FIXTURES["image"]:
        if row["model_sha256"] != card_sha(row["disease"], row["model"]):
            continue  # an int8 variant's fixture: the baseline serves the shipped fp32 files
        data = (MODELS / "examples" / row["file"]).read_bytes()
        status, v = upload(f"{base}/predict/{row['disease']}/{row['model']}", data)
        assert status == 200, (row["file"], v)
        tol = FIXTURES["jpeg_tolerance"] if row["file"].endswith((".jpg", ".jpeg")) \
            else FIXTURES["tolerance"]
        for got, want in zip(v["probabilities"], row["probabilities"], strict=True):
            assert abs(got - want) <= tol, (row["file"], v["probabilities"], row["probabilities"])
        checked += 1
    assert checked >= 4, "both image models' fixtures were checked"


@pytest.mark.parametrize("body,names", [
    (b"{", "not JSON"),
    (b"[1, 2]", "JSON object"),
    (json.dumps({"glucose": 120}).encode(), "required"),
])
def test_bad_input_is_refused_with_what_is_wrong(base, body, names):
    status, v = post(f"{base}/predict/diabetes/tabular", body, "application/json")
    assert status == 400 and names in v["detail"], v


def test_out_of_range_and_undecodable_input_are_refused(base):
    row = dict(FIXTURES["tabular"][0]["input"])
    row["glucose"] = 10_000
    status, v = post(f"{base}/predict/diabetes/tabular", json.dumps(row).encode(),
                     "application/json")
    assert status == 400 and "glucose" in v["detail"], v
    status, v = upload(f"{base}/predict/heart/ecg", b"not an image")
    assert status == 400 and "decoded" in v["detail"], v
