"""The compose deployment, for real: docker-compose.yml with heart-svc scaled to three, every
container under its 512 MB limit, driven through the gateway's port (published on 127.0.0.1
only; the containers talk among themselves on their compose network).

Run by scripts/test-containers.sh, which builds the images first (the tests need its
environment: the project name, and the images built from the locally made base images).
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECT = os.environ.get("MEDCHAIN_COMPOSE_PROJECT", "medchaintest")
MB = 1 << 20
CLINICIAN = "mk_" + secrets.token_hex(24)
ADMIN = "mk_" + secrets.token_hex(24)
# What the tests measured, written to .data/artifacts/containers.json at the end.
FIGURES: dict = {}
TABULAR = {
    "diabetes": {"pregnancies": 6, "glucose": 148, "blood_pressure": 72, "skin_thickness": 35,
                 "insulin": None, "bmi": 33.6, "diabetes_pedigree_function": 0.627, "age": 50},
    "heart": {"age": 63, "sex": 1, "cp": 1, "trestbps": 145, "chol": 233, "fbs": 1,
              "restecg": 2, "thalach": 150, "exang": 0, "oldpeak": 2.3, "slope": 3, "ca": 0,
              "thal": 6},
}


def run(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, check=check, **kw)


def compose(env_file: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run("docker-compose", "--env-file", str(env_file), "-p", PROJECT,
               "-f", str(ROOT / "docker-compose.yml"), *args, check=check, cwd=ROOT)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def entry(key_id: str, role: str, key: str) -> str:
    return f"{key_id}:{role}:{hashlib.sha256(key.encode()).hexdigest()}"


class Api:
    """The gateway's public API on its published loopback port."""

    def __init__(self, base: str):
        self.base = base

    def call(self, method: str, path: str, key: str | None = None, body=None,
             content_type: str = "application/json", timeout: float = 120):
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if key:
            req.add_header("authorization", f"Bearer {key}")
        if data is not None:
            req.add_header("content-type", content_type)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                return e.code, json.loads(raw or b"null")
            except ValueError:
                return e.code, raw.decode(errors="replace")

    def image(self, path: str, key: str, file: Path, fields: dict | None = None):
        boundary = "medchain-" + secrets.token_hex(8)
        parts = []
        for name, value in (fields or {}).items():
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                         f"{value}\r\n".encode())
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
                     f'filename="{file.name}"\r\nContent-Type: image/jpeg\r\n\r\n'.encode()
                     + file.read_bytes() + b"\r\n")
        parts.append(f"--{boundary}--\r\n".encode())
        return self.call("POST", path, key, b"".join(parts),
                         content_type=f"multipart/form-data; boundary={boundary}")


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    """The compose project up with three heart-svc instances; its API and containers."""
    work = tmp_path_factory.mktemp("compose")
    gateway_image = f"{PROJECT}_gateway"
    creds = run("docker", "run", "--rm", gateway_image, "new-credentials").stdout
    port = free_port()
    env_file = work / ".env"
    env_file.write_text(creds + "\n".join([
        f"GATEWAY__CLIENTS__KEYS={entry('compose-clinician', 'clinician', CLINICIAN)},"
        f"{entry('compose-admin', 'admin', ADMIN)}",
        f"MEDCHAIN_PUBLISH=127.0.0.1:{port}",
        "",
    ]))
    compose(env_file, "down", "-v", "--remove-orphans", check=False)
    up = compose(env_file, "up", "-d", "--no-build", "--scale", "heart-svc=3", check=False)
    assert up.returncode == 0, up.stderr
    api = Api(f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 300
    status = None
    while time.monotonic() < deadline:
        try:
            status, _ = api.call("GET", "/readyz", timeout=5)
        except OSError:
            status = None
        if status == 200:
            break
        time.sleep(1)
    assert status == 200, compose(env_file, "ps", check=False).stdout
    found = {"api": api, "env_file": env_file}
    yield found
    FIGURES["cgroup_peak_mb"] = {n: cgroup_peak_mb(i["Id"]) for n, i in containers(found).items()}
    FIGURES["image_mb"] = {
        svc: round(json.loads(run("docker", "image", "inspect", f"{PROJECT}_{svc}").stdout)[0]["Size"] / MB, 1)
        for svc in ("gateway", "diabetes-svc", "heart-svc", "chain-svc", "anvil")}
    out = ROOT / ".data/artifacts/containers.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(FIGURES, indent=1) + "\n")
    if not os.environ.get("MEDCHAIN_CONTAINERS_KEEP"):
        compose(env_file, "down", "-v", "--remove-orphans", check=False)


def cgroup_peak_mb(container_id: str) -> float | None:
    """The container's memory peak as the kernel counts it (cgroup v2 memory.peak, or v1
    memory.max_usage_in_bytes, which counts page cache too), MB."""
    for path in (f"/sys/fs/cgroup/system.slice/docker-{container_id}.scope/memory.peak",
                 f"/sys/fs/cgroup/memory/docker/{container_id}/memory.max_usage_in_bytes"):
        try:
            return round(int(Path(path).read_text()) / MB, 1)
        except OSError:
            continue
    return None


def containers(system) -> dict[str, dict]:
    ids = compose(system["env_file"], "ps", "-q").stdout.split()
    out = {}
    for cid in ids:
        info = json.loads(run("docker", "inspect", cid).stdout)[0]
        out[info["Name"].lstrip("/")] = info
    return out


def service_of(info: dict) -> str:
    return info["Config"]["Labels"]["com.docker.compose.service"]


def test_health_checks_turn_healthy_without_loading_a_model(system):
    """Health is the process alone: every container healthy while no model is loaded yet."""
    for name, info in containers(system).items():
        health = info["State"].get("Health", {}).get("Status")
        deadline = time.monotonic() + 120
        while health != "healthy" and time.monotonic() < deadline:
            time.sleep(2)
            info = json.loads(run("docker", "inspect", name).stdout)[0]
            health = info["State"].get("Health", {}).get("Status")
        assert health == "healthy", f"{name}: {health}"
    for disease in ("diabetes", "heart"):
        status, body = system["api"].call("GET", f"/api/v1/{disease}/models", ADMIN)
        assert status == 200, body
        assert {m["state"] for m in body["models"]} == {"unloaded"}, body


def test_every_container_is_capped_at_512_mb_and_runs_as_non_root(system):
    found = containers(system)
    services = sorted(service_of(i) for i in found.values())
    assert services == ["anvil", "chain-svc", "diabetes-svc", "gateway", "heart-svc",
                        "heart-svc", "heart-svc"], services
    for name, info in found.items():
        assert info["HostConfig"]["Memory"] == 512 * MB, name
        assert info["Config"]["User"] == "10001", name
        uid = run("docker", "exec", name, "id", "-u").stdout.strip()
        assert uid == "10001", name
        # Only the gateway is published, and on loopback only.
        ports = {k: v for k, v in (info["NetworkSettings"]["Ports"] or {}).items() if v}
        if service_of(info) == "gateway":
            assert [b["HostIp"] for b in ports["8080/tcp"]] == ["127.0.0.1"], ports
        else:
            assert not ports, f"{name} publishes {ports}"


def test_model_files_are_read_only(system):
    for name, info in containers(system).items():
        svc = service_of(info)
        if svc not in ("diabetes-svc", "heart-svc"):
            continue
        folder = f"/opt/medchain/models/{svc.removesuffix('-svc')}"
        res = run("docker", "exec", name, "sh", "-c",
                  f"for f in {folder}/*.onnx; do [ -w \"$f\" ] && echo \"writable $f\"; done; "
                  f"touch {folder}/new 2>/dev/null && echo 'folder writable'; true")
        assert res.stdout.strip() == "", f"{name}: {res.stdout}"


def test_both_diseases_predict_from_features_and_images(system):
    api = system["api"]
    examples = ROOT / "models/examples"
    for disease, route, image in (("diabetes", "retina", examples / "retina/0-no_dr-1.jpg"),
                                  ("heart", "ecg", examples / "ecg/0-normal-0.jpg")):
        features = TABULAR[disease]
        status, body = api.call("POST", f"/api/v1/{disease}/predict/tabular", CLINICIAN, features)
        assert status == 200, body
        assert 0.0 <= body["result"]["probability"] <= 1.0, body
        status, body = api.image(f"/api/v1/{disease}/predict/{route}", CLINICIAN, image)
        assert status == 200, body
        assert body["result"]["probabilities"], body


def test_image_models_load_from_the_variants_made_as_the_images_were_built(system):
    """The images ran `optimize-models` as they were built, on this machine's CPU class: each
    disease service that loaded its image model loaded the variant (its log says which)."""
    api = system["api"]
    examples = ROOT / "models/examples"
    for disease, route, image in (("diabetes", "retina", examples / "retina/0-no_dr-1.jpg"),
                                  ("heart", "ecg", examples / "ecg/0-normal-0.jpg")):
        status, body = api.image(f"/api/v1/{disease}/predict/{route}", CLINICIAN, image)
        assert status == 200, body
    loaded: dict[str, list] = {"retina": [], "ecg": []}
    for name, info in containers(system).items():
        if service_of(info) not in ("diabetes-svc", "heart-svc"):
            continue
        files = run("docker", "exec", name, "sh", "-c",
                    "ls /opt/medchain/models/*/ | grep -c '[.]optimized[.]'").stdout.strip()
        assert int(files) >= 2, f"{name}: {files} variant files"
        logs = run("docker", "logs", name)
        for line in (logs.stdout + "\n" + logs.stderr).splitlines():
            try:
                line_json = json.loads(line)
            except ValueError:
                continue
            # The services log JSON with the event's fields flattened into the line.
            fields = line_json.get("fields", line_json) if isinstance(line_json, dict) else {}
            if fields.get("message") == "model loaded" and fields.get("model") in loaded:
                loaded[fields["model"]].append((name, fields.get("optimized")))
    for model, loads in loaded.items():
        assert loads, f"no {model} load logged"
        assert all(o not in (None, "no") for _, o in loads), loads


def test_a_recorded_prediction_is_confirmed_on_chain_and_verifies(system):
    api = system["api"]
    features = TABULAR["diabetes"]
    status, p = api.call("POST", "/api/v1/diabetes/predict/tabular", CLINICIAN,
                         dict(features, patient_id="MRN-COMPOSE-1"))
    assert status == 200 and p["audit"]["status"] == "pending", p
    pid = p["prediction_id"]
    rec = {}
    for _ in range(120):
        status, rec = api.call("GET", f"/api/v1/records/{pid}", CLINICIAN)
        if status == 200 and rec["status"] == "confirmed":
            break
        time.sleep(0.5)
    assert rec.get("status") == "confirmed" and rec.get("matches_chain") is True, rec
    status, v = api.call("POST", f"/api/v1/records/{pid}/verify", CLINICIAN,
                         {"features": features, "salt": p["audit"]["salt"]})
    assert status == 200 and v["verified"] is True, v
    changed = dict(features, glucose=149)
    status, v = api.call("POST", f"/api/v1/records/{pid}/verify", CLINICIAN,
                         {"features": changed, "salt": p["audit"]["salt"]})
    assert status == 200 and v["verified"] is False, v


def test_requests_reach_all_three_heart_instances(system):
    api = system["api"]
    features = TABULAR["heart"]
    for _ in range(45):
        # Paced under the gateway's per-caller limit (20 a second).
        time.sleep(0.1)
        status, body = api.call("POST", "/api/v1/heart/predict/tabular", CLINICIAN, features)
        assert status == 200, body
    served = {}
    for name, info in containers(system).items():
        if service_of(info) != "heart-svc":
            continue
        res = run("docker", "logs", name)
        logs = res.stdout + res.stderr  # the services log to stderr
        served[name] = sum(1 for line in logs.splitlines()
                           if '"served"' in line and "/v1/predict/tabular" in line)
    assert len(served) == 3, served
    assert all(n > 0 for n in served.values()), f"some instance got nothing: {served}"


def stream(api: Api, path: str, body_of, seconds: float, rate: float = 10.0):
    """Sends requests at `rate` a second for `seconds` in the background; returns the thread
    and the list it appends (sent-at, status, body) to."""
    import threading
    results: list = []

    def loop():
        end = time.monotonic() + seconds
        n = 0
        while time.monotonic() < end:
            started = time.monotonic()
            try:
                status, body = api.call("POST", path, CLINICIAN, body_of(n), timeout=30)
            except OSError as e:
                status, body = 0, str(e)
            results.append((started, status, body))
            n += 1
            time.sleep(max(0.0, 1 / rate - (time.monotonic() - started)))

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    return t, results


def test_killing_one_heart_instance_costs_at_most_its_requests_in_flight(system):
    api = system["api"]
    heart = sorted(n for n, i in containers(system).items() if service_of(i) == "heart-svc")
    assert len(heart) == 3, heart
    t, results = stream(api, "/api/v1/heart/predict/tabular", lambda n: TABULAR["heart"], 12)
    time.sleep(4)
    killed_at = time.monotonic()
    run("docker", "kill", heart[1])
    t.join()
    before = [r for r in results if r[0] < killed_at]
    after = [r for r in results if r[0] >= killed_at]
    failed = [(round(r[0] - killed_at, 3), r[1]) for r in results if r[1] != 200]
    FIGURES["heart_kill"] = {"requests": len(results), "failed": failed}
    assert all(r[1] == 200 for r in before), failed
    # A tabular request is answered in milliseconds: at most one can be in flight on the
    # instance when it dies; every later one must succeed.
    assert len(failed) <= 1, failed
    assert all(r[1] == 200 for r in after[2:]), failed
    compose(system["env_file"], "up", "-d", "--no-build", "--scale", "heart-svc=3")


def test_chain_svc_restarts_lose_and_duplicate_no_accepted_record(system):
    api = system["api"]
    chain = next(n for n, i in containers(system).items() if service_of(i) == "chain-svc")
    body = lambda n: dict(TABULAR["diabetes"], patient_id=f"MRN-RESTART-{n % 7}", age=30 + n % 40)
    t, results = stream(api, "/api/v1/diabetes/predict/tabular", body, 40, rate=5)
    time.sleep(8)
    run("docker", "restart", chain)
    time.sleep(10)
    run("docker", "kill", chain)
    time.sleep(2)
    compose(system["env_file"], "up", "-d", "--no-build", "chain-svc")
    t.join()
    statuses = {}
    accepted = []
    for _, status, b in results:
        assert status == 200, b  # the prediction itself is always answered
        audit = b["audit"]["status"]
        statuses[audit] = statuses.get(audit, 0) + 1
        if audit == "pending":
            accepted.append(b["prediction_id"])
    FIGURES["chain_restarts"] = {"predictions": len(results), "audit": statuses}
    assert len(accepted) >= 20, statuses
    lost, duplicated = [], []
    deadline = time.monotonic() + 180
    for pid in accepted:
        while True:
            status, rec = api.call("GET", f"/api/v1/records/{pid}", CLINICIAN)
            if status == 200 and rec["status"] == "confirmed":
                if rec["commitments_on_chain"] != 1:
                    duplicated.append(pid)
                break
            if time.monotonic() > deadline:
                lost.append((pid, status, rec))
                break
            time.sleep(0.5)
    FIGURES["chain_restarts"].update(accepted=len(accepted), lost=len(lost),
                                     duplicated=len(duplicated))
    assert (lost, duplicated) == ([], []), (lost, duplicated)
