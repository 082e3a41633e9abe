#!/usr/bin/env python3
"""chain-svc's RSS as its outbox grows: records only, no predictions.

    bench/probes/chain_outbox_growth.py <path to chain-svc binary> [records, default 16000]

Starts chain-svc (embedded anvil, temporary data dir) on port 18931, posts records with 8
client threads in batches of 2,000 and prints RSS and the outbox file's size after each batch.
Written to tell a leak from redb's page cache (capped at 4 MB) filling up.
"""
import json, os, subprocess, sys, tempfile, time, uuid, urllib.request, concurrent.futures as cf
binary = sys.argv[1]; n = int(sys.argv[2]) if len(sys.argv) > 2 else 16000
data = tempfile.mkdtemp()
port = 18931
env = dict(os.environ, CHAIN__SERVER__PORT=str(port), MEDCHAIN_DATA_DIR=data, CHAIN__TELEMETRY__FILTER="warn")
p = subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
def rss():
    for l in open(f"/proc/{p.pid}/status"):
        if l.startswith("VmRSS"): return int(l.split()[1]) / 1024
for _ in range(300):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1); break
    except Exception: time.sleep(0.1)
def post(i):
    body = json.dumps({"prediction_id": str(uuid.uuid4()), "disease": "diabetes", "modality": "tabular",
        "model": {"id": "diabetes-tabular-xgb", "version": "1.0.0", "sha256": "2489"}, "label": 1,
        "probability": 0.77, "patient_id": f"P-{i % 50}", "input_digest": "0x" + "ab" * 32}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/records", data=body, headers={"content-type": "application/json", "x-internal-token": "t0k3n-for-growth-test-0123456789"})
    return urllib.request.urlopen(req, timeout=30).status
print("start rss", round(rss(), 1))
with cf.ThreadPoolExecutor(8) as ex:
    for k in range(0, n, 2000):
        list(ex.map(post, range(k, k + 2000)))
        size = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(os.path.join(data, "chain")) for f in fs if f.endswith(".redb"))
        print(k + 2000, "records: rss", round(rss(), 1), "MB, outbox file", round(size / 2**20, 1), "MB", flush=True)
p.terminate(); p.wait()
