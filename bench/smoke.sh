#!/usr/bin/env bash
# Part of the test command: runs the benchmark command itself (`medchain-bench system --quick`)
# on the debug binaries of the test build, into a temporary folder, and checks that every
# phase ran and every request succeeded. Its figures are thrown away (debug build, few
# requests); publishable figures come only from bench/run.sh.
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
cd "$ROOT"
bin="${CARGO_TARGET_DIR:-$ROOT/target}/debug"
cargo build --quiet --bins
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
for kind in system chain decode v2 baseline; do
  if ! "$bin/medchain-bench" "$kind" --quick --bin-dir "$bin" --out "$out" >"$out/$kind.log" 2>&1; then
    cat "$out/$kind.log" >&2
    echo "bench: 0 passed, 1 failed"
    exit 1
  fi
done
python3 - "$out" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
r = json.loads((out / "results/system-quick.json").read_text())
problems = []
# The variants were made and loaded, and the portable file was loaded when asked for.
lp = r["load_peaks"]
if not lp.get("ran"):
    problems.append(f"load peaks: {lp.get('reason')}")
else:
    for l in lp["loads"]:
        wanted = l["source"] == "optimized"
        if not l["ok"] or (l["loaded_optimized"] is not None) != wanted:
            problems.append(f"load peak: {l}")
d = json.loads((out / "results/decode-quick.json").read_text())
# The budget holds: a 16-bit 40-MP PNG (320 MB decoded) is refused with the shipped budget and
# served with the budget out of the way, at a higher peak.
held = {(c["image"], c["budget_mb"] is not None): c for c in d["cases"]}
shipped, unbounded = held[("40-MP 16-bit RGBA PNG", True)], held[("40-MP 16-bit RGBA PNG", False)]
if set(shipped["statuses"]) != {"413"}:
    problems.append(f"decode budget did not refuse: {shipped}")
if set(unbounded["statuses"]) != {"200"} or unbounded["peak_mb"] <= shipped["peak_mb"] + 300:
    problems.append(f"decode without the budget: {unbounded} (shipped: {shipped})")
v2 = json.loads((out / "results/v2-quick.json").read_text())
if len(v2["ways"]) != 8 or len(v2["batches"]) != 8:
    problems.append(f"v2: {len(v2['ways'])} ways, {len(v2['batches'])} batches")
for w in v2["ways"] + v2["batches"]:
    if w["load"]["failed"] or not w["load"]["ok"]:
        problems.append(f"v2: {w.get('way', w.get('model'))}: {w['load']}")
c = json.loads((out / "results/chain-quick.json").read_text())
for s in c["streams"]:
    if not s["all_confirmed_once"] or s["blocks_with_records"] < 1:
        problems.append(f"chain stream: {s['mode']}")
    if s["largest_batch"]["records"] >= 100 and s["largest_batch"]["gas_per_record"] > 5000:
        problems.append(f"chain gas per record: {s['largest_batch']}")
if c["backlog"]["records"] != 200 or not c["backlog"]["samples"]:
    problems.append(f"chain backlog: {c['backlog']['records']} records")
if len(r["first_predictions"]) != 4 or not all(p["ok"] for p in r["first_predictions"]):
    problems.append(f"first predictions: {r['first_predictions']}")
for p in r["peaks"]:
    if "load" in p and (p["load"]["failed"] or not p["load"]["ok"]):
        problems.append(f"{p['phase']}: {p['load']}")
    for name in ("gateway", "diabetes-svc", "heart-svc", "chain-svc"):
        if not p["memory"].get(name, {}).get("peak_mb"):
            problems.append(f"{p['phase']}: no peak for {name}")
if len(r["warm"]) != 30 or any(w["failed"] or not w["ok"] for w in r["warm"]):
    problems.append("warm runs: " + str([(w["endpoint"], w["route"], w["concurrency"], w["first_failure"]) for w in r["warm"] if w["failed"] or not w["ok"]]))
if len(r["floor"]) != 4 or not all(f["p50_ms"] and f.get("ratio_direct") for f in r["floor"]):
    problems.append(f"floor: {r['floor']}")
if not all(r["startup"][n]["ready_ms"] > 0 for n in ("gateway", "diabetes-svc", "heart-svc", "chain-svc")):
    problems.append(f"startup: {r['startup']}")
q = r.get("int8", {})
if q.get("ran"):
    if not all(p["ok"] for p in q["first_predictions"]):
        problems.append(f"int8 first predictions: {q['first_predictions']}")
    for run in q["peaks"] + q["warm"]:
        load = run.get("load", run)
        if load.get("failed"):
            problems.append(f"int8 run: {load}")
    if not all(f["p50_ms"] for f in q["floor"]):
        problems.append(f"int8 floor: {q['floor']}")
b = json.loads((out / "results/baseline-quick.json").read_text())
if [len(s["runs"]) for s in b["sides"]] != [20, 10]:
    problems.append(f"baseline: runs per side {[len(s['runs']) for s in b['sides']]}")
for s in b["sides"]:
    for run in s["runs"]:
        # CPU comes from /proc in 10-ms ticks: a quick run of 20 tabular requests at ~60 us
        # each can read 0, so each run's figure must be there and not negative, and the
        # side's sum (its image runs take milliseconds a request) above zero.
        if run["load"]["failed"] or not run["load"]["ok"] or run["cpu_us_per_request"] < 0:
            problems.append(f"baseline: {s['name']} {run['endpoint']} {run['route']}: {run['load']}, CPU {run['cpu_us_per_request']}")
    if not sum(run["cpu_us_per_request"] for run in s["runs"]) > 0:
        problems.append(f"baseline: {s['name']}: no CPU measured in any run")
    if not all(f["ok"] for f in s["first_predictions"]) or not s["peak_rss_mb"] > s["idle_rss_mb"] > 0:
        problems.append(f"baseline: {s['name']}: {s['first_predictions']}, RSS {s['idle_rss_mb']} → {s['peak_rss_mb']}")
md = (out / "BENCHMARKS.md").read_text()
for section in ("### Targets", "### Peak RSS", "### Warm latency", "### The floor", "## The image decode budget", "## The audit trail on chain", "## Open Inference Protocol", "## The Python baseline"):
    if section not in md:
        problems.append(f"BENCHMARKS.md lacks {section}")
for p in problems:
    print("bench smoke:", p, file=sys.stderr)
print(f"bench: {0 if problems else 1} passed, {1 if problems else 0} failed")
sys.exit(1 if problems else 0)
PY
