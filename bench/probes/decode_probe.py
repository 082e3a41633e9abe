#!/usr/bin/env python3
"""Peak RSS of a disease service (release build) under concurrent uploads of large images: what
the image decode budget (`images.decode_budget_mb`) bounds.

    bench/probes/decode_probe.py                 # 4 × 16-bit RGBA and 4 × 8-bit RGB 40-MP PNGs
    bench/probes/decode_probe.py --n 8
    DIABETES__IMAGES__DECODE_BUDGET_MB=1000000 bench/probes/decode_probe.py   # budget out of the way
    .tools/pyenv/bin/python bench/probes/decode_probe.py --progressive --service heart
        # progressive JPEGs (needs Pillow, in the test environment): one 40-MP (4:2:0, then
        # 4:4:4) and two 22-MP at once, to heart-svc

Writes two PNGs of 7000×5700 pixels (39.9 MP, just under the 40-MP limit) of one flat colour,
so they compress to a few hundred KB: one 16-bit RGBA (decodes to 320 MB), one 8-bit RGB
(120 MB). For each, starts target/release/diabetes-svc on a free port, loads the retina model
with a small example, resets the peak (/proc/<pid>/clear_refs), sends N uploads at once and
prints their HTTP statuses and the service's peak RSS (VmHWM). Environment variables reach the
service. Standard library only.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
import zlib
from pathlib import Path

from bench_service import free_port, status

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "decode-probe-" + uuid.uuid4().hex
W, H = 7000, 5700
PREFIX, ROUTE = "DIABETES", "retina"


def png(bit_depth: int, colour_type: int, bytes_per_pixel: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    row = b"\x00" + bytes([17]) * (W * bytes_per_pixel)
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(H)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", W, H, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
            + chunk(b"IEND", b""))


def progressive_jpeg(w: int, h: int, subsampling: int) -> bytes:
    """A smooth picture, so that it compresses to a few hundred KB."""
    import io

    from PIL import Image

    img = Image.linear_gradient("L").resize((w, h)).convert("RGB")
    out = io.BytesIO()
    img.save(out, "JPEG", quality=30, progressive=True, subsampling=subsampling)
    return out.getvalue()


SERVICES = {"diabetes": ("DIABETES", "retina"), "heart": ("HEART", "ecg")}


def upload(base: str, data: bytes, content_type: str) -> int:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
            f"filename=\"x\"\r\nContent-Type: {content_type}\r\n\r\n").encode() + data + \
        f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(base + f"/v1/predict/{ROUTE}", data=body, headers={
        "content-type": f"multipart/form-data; boundary={boundary}", "x-internal-token": TOKEN})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def probe(binary: Path, name: str, data: bytes, n: int, content_type: str = "image/png") -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ,
               MEDCHAIN_DATA_DIR=tempfile.mkdtemp(prefix="decode-probe-"))
    env.update({f"{PREFIX}__SERVER__PORT": str(port), f"{PREFIX}__TELEMETRY__FILTER": "warn",
                f"{PREFIX}__CHAIN__URL": ""})
    svc = subprocess.Popen([str(binary)], env=env, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(base + "/healthz", timeout=2).read()
                break
            except OSError:
                if svc.poll() is not None:
                    sys.exit(f"{binary} exited")
                time.sleep(0.1)
        example = sorted((ROOT / f"models/examples/{ROUTE}").glob("*.jpg"))[0].read_bytes()
        assert upload(base, example, "image/jpeg") == 200, f"the {ROUTE} model did not load"
        loaded = status(svc.pid)["VmRSS"]
        Path(f"/proc/{svc.pid}/clear_refs").write_text("5")
        with cf.ThreadPoolExecutor(n) as pool:
            codes = list(pool.map(lambda _: upload(base, data, content_type), range(n)))
        peak = status(svc.pid)["VmHWM"]
        print(f"{name} ({len(data) / 1024:.0f} KB) × {n} at once: statuses {codes}; "
              f"RSS after model load {loaded:.1f} MB, peak during the uploads {peak:.1f} MB")
    finally:
        svc.terminate()
        svc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=4, help="uploads at once (default 4)")
    ap.add_argument("--service", choices=sorted(SERVICES), default="diabetes")
    ap.add_argument("--progressive", action="store_true", help="progressive JPEGs, not PNGs")
    ap.add_argument("--profile", default="release", help="target folder (default release)")
    a = ap.parse_args()
    global PREFIX, ROUTE
    PREFIX, ROUTE = SERVICES[a.service]
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / a.profile
    binary = target / f"{a.service}-svc"
    if not binary.is_file():
        sys.exit(f"{binary} is missing: cargo build --release --bin {a.service}-svc")
    budget = os.environ.get(f"{PREFIX}__IMAGES__DECODE_BUDGET_MB", "default")
    print(f"{a.service}-svc ({a.profile}), decode budget: {budget} MB")
    if a.progressive:
        probe(binary, "40-MP progressive JPEG, 4:2:0", progressive_jpeg(7300, 5470, 2), 1,
              "image/jpeg")
        probe(binary, "40-MP progressive JPEG, 4:4:4", progressive_jpeg(7300, 5470, 0), 1,
              "image/jpeg")
        probe(binary, "22-MP progressive JPEG, 4:2:0", progressive_jpeg(5700, 3860, 2), 2,
              "image/jpeg")
        return
    probe(binary, "40-MP 16-bit RGBA PNG", png(16, 6, 8), a.n)
    probe(binary, "40-MP 8-bit RGB PNG", png(8, 2, 3), a.n)


if __name__ == "__main__":
    main()
