#!/usr/bin/env python3
"""Memory and latency of one disease service, release build, on this machine.

    bench/probes/bench_service.py diabetes [--arena on|off] [--memory-pattern on|off] [--json out.json]
    bench/probes/bench_service.py heart --tabular-only

Starts target/release/<disease>-svc on a free loopback port and reports, from /proc:
RSS at idle (before any prediction), after each model's first load, and peak RSS (VmHWM) under
16 concurrent uploads of a 3000x2000 JPEG; plus first-request latency (includes the lazy load)
and warm latency per model (client-side wall time and the service's own inference_ms).
Standard library only (the JPEG comes from the service's own example, upscaled with PIL if PIL
is installed, else from a bundled example as is).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
IMAGE_ROUTE = {"diabetes": "retina", "heart": "ecg"}
TABULAR = {
    "diabetes": {"pregnancies": 6, "glucose": 148, "blood_pressure": 72, "skin_thickness": 35,
                 "insulin": None, "bmi": 33.6, "diabetes_pedigree_function": 0.627, "age": 50},
    "heart": {"age": 63, "sex": 1, "cp": 1, "trestbps": 145, "chol": 233, "fbs": 1,
              "restecg": 2, "thalach": 150, "exang": 0, "oldpeak": 2.3, "slope": 3, "ca": 0,
              "thal": 6},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status(pid: int) -> dict:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            out[line.split(":")[0]] = int(line.split()[1]) / 1024
    return out


def request(url, data=None, headers=None):
    req = urllib.request.Request(url, data=data, headers=headers or {})
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=120) as r:
        body = r.read()
    return (time.perf_counter() - t) * 1e3, json.loads(body)


def post_json(base, path, obj):
    return request(base + path, json.dumps(obj).encode(), {"content-type": "application/json"})


def post_image(base, path, data: bytes):
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
            f"filename=\"x.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n").encode() + data + \
        f"\r\n--{boundary}--\r\n".encode()
    return request(base + path, body, {"content-type": f"multipart/form-data; boundary={boundary}"})


def big_jpeg(disease: str) -> bytes:
    folder = ROOT / "models/examples" / IMAGE_ROUTE[disease]
    src = sorted(folder.glob("*.jpg"))[0]
    try:
        from PIL import Image
    except ImportError:
        return src.read_bytes()
    img = Image.open(src).convert("RGB").resize((3000, 2000), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("disease", choices=list(IMAGE_ROUTE))
    ap.add_argument("--arena", choices=["on", "off"], help="ONNX Runtime's CPU arena "
                    "(default: the service's setting)")
    ap.add_argument("--memory-pattern", choices=["on", "off"], help="memory-pattern planning "
                    "(default: the service's setting)")
    ap.add_argument("--warm", type=int, default=200, help="warm tabular requests")
    ap.add_argument("--warm-images", type=int, default=30, help="warm image requests")
    ap.add_argument("--idle-unload", type=int, default=0, metavar="SECS",
                    help="also measure RSS before/after the image model unloads when idle")
    ap.add_argument("--tabular-only", action="store_true", help="skip the image model")
    ap.add_argument("--json", help="write the figures here too")
    a = ap.parse_args()

    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    binary = target / "release" / f"{a.disease}-svc"
    prefix = a.disease.upper()
    port = free_port()
    env = dict(os.environ, **{
        f"{prefix}__SERVER__PORT": str(port),
        f"{prefix}__TELEMETRY__FILTER": "warn",
        f"{prefix}__MODELS__IMAGE__MAX_WAITING": "32",
        f"{prefix}__MODELS__IMAGE__IDLE_UNLOAD_SECS": str(a.idle_unload),
    })
    if a.arena:
        env[f"{prefix}__RUNTIME__CPU_ARENA"] = str(a.arena == "on").lower()
    if a.memory_pattern:
        env[f"{prefix}__RUNTIME__MEMORY_PATTERN"] = str(a.memory_pattern == "on").lower()
    base = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    proc = subprocess.Popen([str(binary)], env=env, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                request(base + "/healthz")
                break
            except OSError:
                if proc.poll() is not None:
                    sys.exit(f"{binary} exited")
                time.sleep(0.005)
        fig = {"binary": str(binary), "arena": a.arena or "default",
               "memory_pattern": a.memory_pattern or "default",
               "ready_ms": round((time.perf_counter() - t0) * 1e3, 1)}
        time.sleep(0.5)
        fig["idle_rss_mb"] = round(status(proc.pid)["VmRSS"], 1)

        img_path = f"/v1/predict/{IMAGE_ROUTE[a.disease]}"
        ms, _ = post_json(base, "/v1/predict/tabular", TABULAR[a.disease])
        fig["first_tabular_ms"] = round(ms, 1)
        fig["rss_after_tabular_load_mb"] = round(status(proc.pid)["VmRSS"], 1)
        lat, inf = [], []
        for _ in range(a.warm):
            ms, body = post_json(base, "/v1/predict/tabular", TABULAR[a.disease])
            lat.append(ms)
            inf.append(body["inference_ms"])
        fig["tabular_warm_ms"] = {"p50": round(pct(lat, 50), 3), "p95": round(pct(lat, 95), 3),
                                  "inference_p50": round(pct(inf, 50), 3)}
        if a.tabular_only:
            return finish(proc, fig, a)
        small = sorted((ROOT / "models/examples" / IMAGE_ROUTE[a.disease]).glob("*.jpg"))[0]
        ms, _ = post_image(base, img_path, small.read_bytes())
        fig["first_image_ms"] = round(ms, 1)
        fig["rss_after_image_load_mb"] = round(status(proc.pid)["VmRSS"], 1)
        lat, inf = [], []
        data = small.read_bytes()
        for _ in range(a.warm_images):
            ms, body = post_image(base, img_path, data)
            lat.append(ms)
            inf.append(body["inference_ms"])
        fig["image_warm_ms"] = {"p50": round(pct(lat, 50), 1), "p95": round(pct(lat, 95), 1),
                                "inference_p50": round(pct(inf, 50), 1),
                                "image": f"{small.name} ({len(data)} bytes)"}

        big = big_jpeg(a.disease)
        with cf.ThreadPoolExecutor(16) as pool:
            t = time.perf_counter()
            results = list(pool.map(lambda _: post_image(base, img_path, big), range(16)))
            wall = (time.perf_counter() - t) * 1e3
        st = status(proc.pid)
        fig["upload_16x_3000x2000"] = {
            "jpeg_bytes": len(big), "wall_ms": round(wall, 1),
            "decode_scale": results[0][1]["image"]["decode_scale"],
            "rss_after_mb": round(st["VmRSS"], 1), "peak_rss_mb": round(st["VmHWM"], 1),
        }
        fig["peak_rss_mb"] = round(st["VmHWM"], 1)
        if a.idle_unload:
            before = status(proc.pid)["VmRSS"]
            deadline = time.time() + a.idle_unload + 30
            state = None
            while time.time() < deadline:
                _, models = request(base + "/models")
                state = next(m["state"] for m in models["models"] if m["key"] != "tabular")
                if state == "unloaded":
                    break
                time.sleep(0.2)
            fig["idle_unload"] = {"after_secs": a.idle_unload, "state": state,
                                  "rss_before_mb": round(before, 1),
                                  "rss_after_mb": round(status(proc.pid)["VmRSS"], 1)}
        fig["peak_rss_mb"] = round(status(proc.pid)["VmHWM"], 1) if "peak_rss_mb" not in fig \
            else fig["peak_rss_mb"]
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)
    finish(proc, fig, a)


def finish(proc, fig, a):
    if proc.poll() is None:
        fig["peak_rss_mb"] = round(status(proc.pid)["VmHWM"], 1)
        proc.terminate()
        proc.wait(10)
    print(json.dumps(fig, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(fig, indent=1) + "\n")


if __name__ == "__main__":
    main()
