"""The standalone verifier (web3.py) against a running system: anvil, chain-svc and diabetes-svc
as real processes. Predictions made with a patient id are recorded; the verifier, given only the
RPC URL, the contract, the receipt and the original input, finds each on chain and matching, and
rejects a changed input, a wrong salt and an unknown prediction.

Needs the debug binaries (scripts/test.sh builds them first), anvil (MEDCHAIN_ANVIL) and the ONNX
Runtime library (ORT_DYLIB_PATH), as scripts/lib.sh sets them."""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))
import verify_record  # noqa: E402

# One credential per pair of services (docs/security.md): the test calls diabetes-svc and reads
# chain-svc as the gateway would (naming an auditor as the caller); diabetes-svc writes to
# chain-svc with its own.
RUN = uuid.uuid4().hex
GATEWAY_TO_DIABETES = "verifier-test-gateway-diabetes-" + RUN
GATEWAY_TO_CHAIN = "verifier-test-gateway-chain-" + RUN
DIABETES_TO_CHAIN = "verifier-test-diabetes-chain-" + RUN
AS_AUDITOR = {"x-internal-token": GATEWAY_TO_CHAIN, "x-medchain-caller": "verifier-test",
              "x-medchain-caller-role": "auditor"}
FEATURES = {"pregnancies": 6, "glucose": 148, "blood_pressure": 72, "skin_thickness": 35,
            "insulin": None, "bmi": 33.6, "diabetes_pedigree_function": 0.627, "age": 50}


def _bin(name: str) -> str:
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    path = Path(os.environ.get("MEDCHAIN_BIN_DIR", target / "debug")) / name
    assert path.is_file(), f"{path} is missing: build it with `cargo build --bins` first"
    return str(path)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _call(url, body=None, content_type="application/json", headers=None):
    req = urllib.request.Request(
        url, data=body, headers=headers or {"x-internal-token": GATEWAY_TO_DIABETES})
    if body is not None:
        req.add_header("content-type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _wait(url, deadline_s=60):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            if _call(url)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer 200 in {deadline_s} s")


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    anvil_bin = os.environ.get("MEDCHAIN_ANVIL", "")
    assert Path(anvil_bin).is_file(), "MEDCHAIN_ANVIL must name anvil (source scripts/lib.sh)"
    data = tmp_path_factory.mktemp("verifier")
    rpc_port, chain_port, diabetes_port = _port(), _port(), _port()
    procs = [subprocess.Popen([anvil_bin, "--host", "127.0.0.1", "--port", str(rpc_port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    rpc = f"http://127.0.0.1:{rpc_port}"
    env = dict(os.environ, MEDCHAIN_DATA_DIR=str(data),
               CHAIN__AUTH__ACCEPT__GATEWAY=GATEWAY_TO_CHAIN,
               CHAIN__AUTH__ACCEPT__DIABETES=DIABETES_TO_CHAIN,
               DIABETES__AUTH__ACCEPT__GATEWAY=GATEWAY_TO_DIABETES,
               DIABETES__AUTH__SEND__CHAIN=DIABETES_TO_CHAIN)
    env.pop("MEDCHAIN_INTERNAL_TOKEN", None)
    try:
        end = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", rpc_port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < end, "anvil did not start"
                time.sleep(0.1)
        procs.append(subprocess.Popen([_bin("chain-svc")], env=dict(
            env, CHAIN__SERVER__PORT=str(chain_port), CHAIN__CHAIN__RPC_URL=rpc,
            CHAIN__CHAIN__DEV_CHAIN="true", CHAIN__CHAIN__POLL_INTERVAL_MS="100",
            CHAIN__TELEMETRY__FILTER="warn"), stdout=subprocess.DEVNULL))
        _wait(f"http://127.0.0.1:{chain_port}/readyz")
        procs.append(subprocess.Popen([_bin("diabetes-svc")], env=dict(
            env, DIABETES__SERVER__PORT=str(diabetes_port),
            DIABETES__CHAIN__URL=f"http://127.0.0.1:{chain_port}",
            DIABETES__TELEMETRY__FILTER="warn"), stdout=subprocess.DEVNULL))
        _wait(f"http://127.0.0.1:{diabetes_port}/healthz")
        yield {"rpc": rpc, "chain": f"http://127.0.0.1:{chain_port}",
               "diabetes": f"http://127.0.0.1:{diabetes_port}", "data": data}
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait(timeout=20)


def _confirmed(system, prediction_id):
    for _ in range(300):
        status, rec = _call(f"{system['chain']}/v1/records/{prediction_id}",
                            headers=AS_AUDITOR)
        if status == 200 and rec.get("status") == "confirmed":
            return rec
        time.sleep(0.1)
    raise AssertionError(f"{prediction_id} not confirmed: {rec}")


def _verify(system, receipt, tmp_path, **source):
    (tmp_path / "receipt.json").write_text(json.dumps(receipt))
    args = ["--rpc", system["rpc"], "--contract", receipt["contract"],
            "--receipt", str(tmp_path / "receipt.json")]
    for k, v in source.items():
        if k == "features":
            (tmp_path / "features.json").write_text(json.dumps(v))
            v = str(tmp_path / "features.json")
        args += [f"--{k}", str(v)]
    # As anyone would run it: its own process, no medchain module on the path.
    res = subprocess.run([sys.executable, str(HERE / "verify_record.py"), *args],
                         capture_output=True, text=True, cwd=tmp_path)
    return res.returncode, json.loads(res.stdout)


def test_a_recorded_tabular_prediction_verifies_and_a_changed_input_does_not(system, tmp_path):
    status, body = _call(f"{system['diabetes']}/v1/predict/tabular",
                         json.dumps(dict(FEATURES, patient_id="MRN-VERIFY-1")).encode())
    assert status == 200, body
    receipt = body["audit"]
    assert receipt["status"] == "pending", receipt
    _confirmed(system, receipt["prediction_id"])
    code, out = _verify(system, receipt, tmp_path, features=FEATURES)
    assert (code, out["on_chain"], out["matches"]) == (0, True, True), out
    assert out["patient_ref_matches_receipt"] is True
    # The verifier's own canonical form gives the service's digest.
    digest = verify_record.hashlib.sha256(verify_record.canonical_features(FEATURES)).hexdigest()
    assert "0x" + digest == receipt["input_digest"]
    changed = dict(FEATURES, glucose=150)
    code, out = _verify(system, receipt, tmp_path, features=changed)
    assert (code, out["on_chain"], out["matches"]) == (1, True, False), out
    wrong_salt = dict(receipt, salt="0x" + "11" * 32)
    code, out = _verify(system, wrong_salt, tmp_path, features=FEATURES)
    assert (code, out["matches"]) == (1, False), out
    # A receipt that claims another result for the same input: the record hash differs.
    claimed = dict(receipt, probability_bps=receipt["probability_bps"] + 1)
    code, out = _verify(system, claimed, tmp_path, features=FEATURES)
    assert (code, out["on_chain"], out["matches"]) == (1, True, False), out
    assert out["commitments_on_chain"] == 1
    unknown = dict(receipt, prediction_id=str(uuid.uuid4()))
    code, out = _verify(system, unknown, tmp_path, features=FEATURES)
    assert (code, out["on_chain"]) == (1, False), out


def test_a_recorded_image_prediction_verifies_from_the_file(system, tmp_path):
    image = REPO / "models" / "examples" / "retina" / sorted(
        p.name for p in (REPO / "models" / "examples" / "retina").glob("*.png"))[0]
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"patient_id\"\r\n\r\n"
            f"MRN-VERIFY-2\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
            f"filename=\"{image.name}\"\r\nContent-Type: image/png\r\n\r\n").encode() \
        + image.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    status, resp = _call(f"{system['diabetes']}/v1/predict/retina", body,
                         f"multipart/form-data; boundary={boundary}")
    assert status == 200, resp
    receipt = resp["audit"]
    _confirmed(system, receipt["prediction_id"])
    code, out = _verify(system, receipt, tmp_path, image=image)
    assert (code, out["matches"]) == (0, True), out
    other = tmp_path / "other.png"
    other.write_bytes(image.read_bytes() + b"\0")
    code, out = _verify(system, receipt, tmp_path, image=other)
    assert (code, out["matches"]) == (1, False), out


@pytest.mark.parametrize("value, text", [(148, "148.0"), (33.6, "33.6"), (0.627, "0.627"),
                                         (1e-7, "1e-7"), (1e16, "1e+16"), (1.5e-300, "1.5e-300"), (2e21, "2e+21"), (0.0001, "0.0001"),
                                         (-2.5, "-2.5"), (123456.789, "123456.789")])
def test_numbers_are_written_as_the_service_writes_them(value, text):
    assert verify_record.shortest(value) == text
