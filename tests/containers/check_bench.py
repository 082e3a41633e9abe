"""Checks a quick run of `medchain-bench containers` (run by scripts/test-containers.sh): the
three deployments ran, every phase's requests all succeeded, every container's cgroup peak was
read and reset per phase, and no container was OOM-killed, restarted or stopped."""
from __future__ import annotations

import json
import sys


def problems(results: dict) -> list[str]:
    out = []
    runs = results.get("runs", [])
    names = [r.get("ecg_model") or "compose" for r in runs]
    if names != ["compose", "int8", "fp32"]:
        out.append(f"deployments: {names}")
    for run in runs:
        name = run.get("ecg_model") or "compose"
        labels = set(run.get("limits_mb", {}))
        if name == "compose":
            want = {"anvil", "chain-svc", "diabetes-svc", "gateway",
                    "heart-svc-1", "heart-svc-2", "heart-svc-3"}
            if labels != want:
                out.append(f"compose containers: {sorted(labels)}")
        for label, limit in run.get("limits_mb", {}).items():
            if limit is None or abs(limit - 512) > 1:
                out.append(f"{name}/{label}: limit {limit} MB")
        loads = [p for p in run.get("phases", []) if "load" in p]
        if len(loads) < 9:
            out.append(f"{name}: {len(loads)} load phases")
        for p in loads:
            load = p["load"]
            if load["failed"] or not load["ok"]:
                out.append(f"{name}/{p['phase']}: {load['ok']} ok, {load['failed']} failed "
                           f"({load.get('first_failure')})")
            # cgroup v2 lets memory.peak be reset only from Linux 6.12.
            if not p.get("peaks_reset") and run.get("cgroup_version") == 1:
                out.append(f"{name}/{p['phase']}: peaks not reset")
            for label, c in p["containers"].items():
                if not c.get("peak_mb"):
                    out.append(f"{name}/{p['phase']}/{label}: no cgroup peak")
        if name == "compose":
            spread = run.get("spread") or []
            if [x["reuse_connections"] for x in spread] != [True, False]:
                out.append(f"spread runs: {spread}")
            for x in spread:
                served = x["served_per_instance"]
                if len(served) != 3 or not all(served.values()):
                    out.append(f"spread, keep-alive {x['reuse_connections']}: served {served}")
                if x["load"]["failed"]:
                    out.append(f"spread, keep-alive {x['reuse_connections']}: {x['load']}")
        for label, c in run.get("end", {}).items():
            if c.get("oom_killed") or c.get("restarts") or not c.get("running"):
                out.append(f"{name}/{label} at the end: {c}")
        for label, image in run.get("images", {}).items():
            if not image or not image.get("size_mib"):
                out.append(f"{name}/{label}: image size unknown")
    return out


if __name__ == "__main__":
    found = problems(json.load(open(sys.argv[1])))
    for p in found:
        print(f"bench containers: {p}", file=sys.stderr)
    sys.exit(1 if found else 0)
