"""The single-instance image alone under a 512 MB limit (`docker run --memory 512m`, no swap),
as Render's free instance runs it, through the benchmark's load phases: every model's first
prediction, 64 concurrent tabular requests per disease, 16 concurrent 3000×2000 uploads per
image model. No OOM kill, no failed request; the container's cgroup peak per phase is written
to .data/artifacts/containers-single.json. Both ECG variants: int8 (the image's default) and
fp32 (built with ECG_MODEL=fp32).

Run by scripts/test-containers.sh, which builds both images first.
"""
from __future__ import annotations

import io
import json
import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_compose import MB, PROJECT, ROOT, TABULAR, Api, entry, free_port, run

KEY = "mk_" + secrets.token_hex(24)
RESULTS: dict = {}
VARIANTS = {
    "int8": (f"{PROJECT}/single", {}),
    "fp32": (f"{PROJECT}/single-fp32", {"HEART__MODELS__IMAGE__CARD": "heart/ecg.card.json"}),
}


def large_jpeg(example: Path) -> bytes:
    """A 3000×2000 JPEG (quality 90) with sensor-like noise: the size a real photo is."""
    img = np.asarray(Image.open(example).convert("RGB").resize((3000, 2000), Image.BILINEAR))
    noise = np.random.default_rng(7).integers(-6, 7, img.shape)
    out = io.BytesIO()
    Image.fromarray(np.clip(img + noise, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=90)
    return out.getvalue()


class Container:
    def __init__(self, image: str, env: dict):
        self.port = free_port()
        args = ["docker", "run", "-d", "--memory", "512m", "--memory-swap", "512m",
                "-p", f"127.0.0.1:{self.port}:8080",
                "-e", f"GATEWAY__CLIENTS__KEYS={entry('single-clinician', 'clinician', KEY)}",
                # One load generator is one caller: the per-caller limit would measure itself.
                "-e", "GATEWAY__CLIENTS__RATE_PER_SECOND=1000000",
                "-e", "GATEWAY__CLIENTS__RATE_BURST=1000000"]
        for k, v in env.items():
            args += ["-e", f"{k}={v}"]
        self.id = run(*args, image).stdout.strip()
        self.api = Api(f"http://127.0.0.1:{self.port}")

    def cgroup(self, name: str) -> Path:
        return Path(f"/sys/fs/cgroup/memory/docker/{self.id}/{name}")

    def reset_peak(self) -> None:
        try:
            self.cgroup("memory.max_usage_in_bytes").write_text("0")
        except OSError:
            pass  # cgroup v2: memory.peak counts from the start

    def peak_mb(self) -> float | None:
        for path in (self.cgroup("memory.max_usage_in_bytes"),
                     Path(f"/sys/fs/cgroup/system.slice/docker-{self.id}.scope/memory.peak")):
            try:
                return round(int(path.read_text()) / MB, 1)
            except OSError:
                continue
        return None

    def state(self) -> dict:
        return json.loads(run("docker", "inspect", self.id).stdout)[0]["State"]

    def stop(self) -> None:
        run("docker", "rm", "-f", self.id, check=False)


@pytest.fixture(scope="module", params=list(VARIANTS))
def single(request):
    image, env = VARIANTS[request.param]
    c = Container(image, env)
    deadline = time.monotonic() + 180
    status = None
    while time.monotonic() < deadline:
        try:
            status, _ = c.api.call("GET", "/readyz", timeout=5)
        except OSError:
            status = None
        if status == 200:
            break
        time.sleep(1)
    assert status == 200, run("docker", "logs", c.id, check=False).stderr[-3000:]
    yield request.param, c
    c.stop()


def phase(c: Container, name: str, requests: list, concurrency: int, figures: dict) -> None:
    c.reset_peak()
    started = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda f: f(), requests))
    failed = [(s, b) for s, b in results if s != 200]
    figures[name] = {"requests": len(results), "failed": len(failed),
                     "cgroup_peak_mb": c.peak_mb(),
                     "seconds": round(time.monotonic() - started, 1)}
    assert not failed, f"{name}: {failed[:3]}"
    state = c.state()
    assert state["Running"] and not state["OOMKilled"], f"{name}: {state}"


def test_the_load_phases_fit_512_mb_with_no_failed_request(single):
    variant, c = single
    api = c.api
    figures: dict = {}
    examples = ROOT / "models/examples"
    images = {"retina": examples / "retina/0-no_dr-1.jpg", "ecg": examples / "ecg/0-normal-0.jpg"}
    routes = (("diabetes", "retina"), ("heart", "ecg"))

    def tabular(disease):
        return lambda: api.call("POST", f"/api/v1/{disease}/predict/tabular", KEY,
                                TABULAR[disease])

    def upload(disease, model, file=None, data=None):
        path = f"/api/v1/{disease}/predict/{model}"
        if data is None:
            return lambda: api.image(path, KEY, file)
        tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"medchain-large-{model}.jpg"
        tmp.write_bytes(data)
        return lambda: api.image(path, KEY, tmp)

    # Every model's first prediction (its lazy load included), one after the other.
    first = [tabular(d) for d, _ in routes] + [upload(d, m, images[m]) for d, m in routes]
    phase(c, "first prediction of each model", first, 1, figures)
    for disease, _ in routes:
        phase(c, f"64 concurrent {disease}/tabular", [tabular(disease)] * 192, 64, figures)
    for disease, model in routes:
        big = large_jpeg(images[model])
        phase(c, f"16 concurrent {disease}/{model} 3000×2000 uploads ({len(big) / MB:.1f} MB)",
              [upload(disease, model, data=big)] * 48, 16, figures)
    RESULTS[variant] = figures
    out = ROOT / ".data/artifacts/containers-single.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(RESULTS, indent=1, ensure_ascii=False) + "\n")
