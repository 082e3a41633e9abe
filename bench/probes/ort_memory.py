#!/usr/bin/env python3
"""What an ONNX Runtime session costs in RSS, and how much of it glibc merely keeps.

    bench/probes/ort_memory.py models/heart/ecg.onnx [--level all|extended|basic] [--no-prepacking]

Loads the model with ONNX Runtime (the same library version the services load, from the test
environment's onnxruntime wheel) in this fresh process and prints RSS added by session creation,
after one run, and after `malloc_trim(0)` — which hands back the large transient buffers that
session initialisation frees (graph optimisation re-lays the weights out) but glibc's heap
keeps. The services call the same trim after each model load (`memory::release_free_memory`).
Also prints VmHWM (the load's transient peak) and the mean of 5 runs.
"""

from __future__ import annotations

import argparse
import ctypes
import time

import numpy as np
import onnxruntime as ort


def status(field: str) -> float:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--level", choices=["all", "extended", "basic"], default="all")
    ap.add_argument("--no-prepacking", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.enable_mem_pattern = False  # the services' default
    so.graph_optimization_level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    }[args.level]
    if args.no_prepacking:
        so.add_session_config_entry("session.disable_prepacking", "1")

    base = status("VmRSS")
    sess = ort.InferenceSession(args.model, so, providers=["CPUExecutionProvider"])
    created = status("VmRSS")
    inp = sess.get_inputs()[0]
    shape = [1 if not isinstance(d, int) else d for d in inp.shape]
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    sess.run(None, {inp.name: x})
    ran = status("VmRSS")
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    trimmed = status("VmRSS")
    t = time.perf_counter()
    for _ in range(5):
        sess.run(None, {inp.name: x})
    ms = (time.perf_counter() - t) / 5 * 1e3
    print(f"{args.model} (onnxruntime {ort.__version__}, level {args.level}, "
          f"prepacking {'off' if args.no_prepacking else 'on'}, {args.threads} threads)")
    print(f"  RSS before: {base:.0f} MB; added by session creation {created - base:+.0f} MB, "
          f"after one run {ran - base:+.0f} MB, after malloc_trim {trimmed - base:+.0f} MB; "
          f"VmHWM {status('VmHWM'):.0f} MB; run {ms:.0f} ms (mean of 5)")


if __name__ == "__main__":
    main()
