#!/usr/bin/env python3
"""RSS and heap of one disease service (release build) under one kind of load at a time.

    bench/probes/heap_probe.py heart img:1000 tab:10000 img:600
    bench/probes/heap_probe.py diabetes img:500 aud:6000 img:500 --with-chain

Starts target/release/<disease>-svc (and, with --with-chain, chain-svc with its local anvil, so
that `aud` requests are recorded) on free loopback ports, runs the plan and prints, after every
step, the service's RSS (from /proc) and its allocator's heap in use and free (from its
/metrics), and its thread count. Plan items: `img:N` uploads (a 224×224 and a noisy 3000×2000
JPEG of the bundled example, alternately, 4 at a time), `tab:N` tabular predictions (16 at a
time), `aud:N` tabular predictions with a patient id (4 at a time), `sleep:S`.

Environment variables reach the service, so glibc's own settings can be compared, e.g.
MALLOC_MMAP_THRESHOLD_=33554432 (glibc's ceiling for its dynamic threshold). Needs numpy and
Pillow (the test environment, .tools/pyenv, has both).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

from bench_service import TABULAR, free_port

ROOT = Path(__file__).resolve().parents[2]
ROUTE = {"diabetes": "retina", "heart": "ecg"}
TOKEN = "heap-probe-" + uuid.uuid4().hex
STEP = {"img": (4, 250), "tab": (16, 5000), "aud": (4, 1000)}


def wait_ready(url: str, proc: subprocess.Popen) -> None:
    while True:
        try:
            urllib.request.urlopen(url, timeout=5).read()
            return
        except OSError:
            if proc.poll() is not None:
                sys.exit(f"{proc.args[0]} exited")
            time.sleep(0.1)


def jpegs(route: str) -> list[bytes]:
    src = sorted((ROOT / "models/examples" / route).glob("*"))[0]
    img = Image.open(src).convert("RGB")
    small = io.BytesIO()
    img.resize((224, 224), Image.BILINEAR).save(small, "JPEG", quality=90)
    big = np.asarray(img.resize((3000, 2000), Image.BILINEAR)).astype(np.int16)
    noise = np.random.default_rng(1).integers(-6, 7, big.shape)
    big = np.clip(big + noise, 0, 255).astype(np.uint8)
    large = io.BytesIO()
    Image.fromarray(big).save(large, "JPEG", quality=90)
    return [small.getvalue(), large.getvalue()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("disease", choices=list(ROUTE))
    ap.add_argument("plan", nargs="+", help="img:N, tab:N, aud:N or sleep:S, in order")
    ap.add_argument("--with-chain", action="store_true", help="start chain-svc for aud:N")
    a = ap.parse_args()

    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release"
    prefix, route = a.disease.upper(), ROUTE[a.disease]
    data = tempfile.mkdtemp(prefix="heap-probe-")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ, **{f"{prefix}__SERVER__PORT": str(port),
                              f"{prefix}__TELEMETRY__FILTER": "warn",
                              "MEDCHAIN_DATA_DIR": data})
    procs = []
    try:
        if a.with_chain:
            cport = free_port()
            chain = subprocess.Popen([str(target / "chain-svc")], stderr=subprocess.DEVNULL,
                                     env=dict(env, CHAIN__SERVER__PORT=str(cport),
                                              CHAIN__TELEMETRY__FILTER="warn"))
            procs.append(chain)
            wait_ready(f"http://127.0.0.1:{cport}/readyz", chain)
            env[f"{prefix}__CHAIN__URL"] = f"http://127.0.0.1:{cport}"
        svc = subprocess.Popen([str(target / f"{a.disease}-svc")], env=env,
                               stderr=subprocess.DEVNULL)
        procs.append(svc)
        wait_ready(base + "/healthz", svc)

        def req(path, body=None, headers=None):
            r = urllib.request.Request(base + path, data=body,
                                       headers={"x-internal-token": TOKEN, **(headers or {})})
            with urllib.request.urlopen(r, timeout=120) as resp:
                return resp.read()

        images = jpegs(route)
        record = TABULAR[a.disease]
        tab_body = json.dumps(record).encode()
        aud_body = json.dumps({**record, "patient_id": "heap-probe-patient"}).encode()

        def one(kind, i):
            if kind == "img":
                b = uuid.uuid4().hex
                body = (f"--{b}\r\nContent-Disposition: form-data; name=\"image\"; "
                        f"filename=\"x.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n").encode() \
                    + images[i % 2] + f"\r\n--{b}--\r\n".encode()
                req(f"/v1/predict/{route}", body,
                    {"content-type": f"multipart/form-data; boundary={b}"})
            else:
                req("/v1/predict/tabular", tab_body if kind == "tab" else aud_body,
                    {"content-type": "application/json"})

        def sample(label):
            status = Path(f"/proc/{svc.pid}/status").read_text().splitlines()
            rss = next(int(l.split()[1]) for l in status if l.startswith("VmRSS")) / 1024
            threads = next(int(l.split()[1]) for l in status if l.startswith("Threads"))
            metrics = req("/metrics").decode().splitlines()

            def gauge(suffix):
                return next(float(l.split()[1]) for l in metrics
                            if l.split(" ")[0].endswith(suffix)) / 2**20
            print(f"{label:>14}  rss {rss:7.1f} MB  heap in use "
                  f"{gauge('_process_heap_in_use_bytes'):7.1f} MB  free "
                  f"{gauge('_process_heap_free_bytes'):6.1f} MB  threads {threads}", flush=True)

        sample("start")
        for item in a.plan:
            kind, n = item.split(":")
            n = int(n)
            if kind == "sleep":
                time.sleep(n)
                sample(f"slept {n} s")
                continue
            conc, step = STEP[kind]
            done = 0
            with cf.ThreadPoolExecutor(conc) as pool:
                while done < n:
                    k = min(step, n - done)
                    list(pool.map(lambda i: one(kind, i), range(done, done + k)))
                    done += k
                    sample(f"{kind} {done}")
        metrics = req("/metrics").decode().splitlines()
        trims = {l.split()[0].rsplit("_", 1)[-1]: float(l.split()[1]) for l in metrics
                 if l.split(" ")[0].endswith(("_process_heap_trim_seconds_sum",
                                               "_process_heap_trim_seconds_count"))}
        if trims.get("count"):
            print(f"heap trims: {trims['count']:.0f}, mean "
                  f"{trims['sum'] / trims['count'] * 1e3:.2f} ms")
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait()


if __name__ == "__main__":
    main()
