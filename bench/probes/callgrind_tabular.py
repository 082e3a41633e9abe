"""Instructions per tabular prediction in diabetes-svc alone, under callgrind: the figure for
judging a change to the per-request path that the machine's noise does not move (the same
binary, inputs and settings give the same count, whatever else the machine is doing).

    python bench/probes/callgrind_tabular.py BINARY [N] [ENV=VALUE ...]

BINARY is a release diabetes-svc; for function names build it unstripped into a target dir of
its own, e.g.  CARGO_TARGET_DIR=/tmp/proftarget CARGO_PROFILE_RELEASE_STRIP=false cargo build
--release --bin diabetes-svc. It starts BINARY under `valgrind --tool=callgrind`, sends 300
requests to warm up, zeroes the counters, sends N (default 1000) tabular predictions at c=1 on one
keep-alive connection, each with an x-request-id as the gateway sends, dumps, and prints the
instructions per request; `callgrind_annotate --inclusive=yes <the .out.1 file>` shows where they
go. ENV=VALUE pairs are passed to the service (DIABETES__TELEMETRY__FORMAT=json, say).
"""
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time



def main() -> int:
    binary = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 and "=" not in sys.argv[2] else 1000
    extra = dict(a.split("=", 1) for a in sys.argv[2:] if "=" in a)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, DIABETES__SERVER__PORT=str(port), DIABETES__CHAIN__URL="",
               DIABETES__SERVER__WORKERS="1", **extra)
    out = os.path.join(tempfile.mkdtemp(), "callgrind.out")
    p = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", binary],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    body = json.dumps({"pregnancies": 2, "glucose": 120, "blood_pressure": 70,
                       "skin_thickness": None, "insulin": 80, "bmi": 28.4,
                       "diabetes_pedigree_function": 0.35, "age": 41})
    for _ in range(600):
        try:
            c = http.client.HTTPConnection("127.0.0.1", port)
            c.request("GET", "/healthz")
            c.getresponse().read()
            break
        except OSError:
            time.sleep(0.1)
    c = http.client.HTTPConnection("127.0.0.1", port)

    def send(k: int) -> None:
        for _ in range(k):
            c.request("POST", "/v1/predict/tabular", body,
                      {"Content-Type": "application/json", "x-request-id": "probe-0123456789"})
            r = c.getresponse()
            r.read()
            assert r.status == 200, r.status

    try:
        send(300)
        subprocess.run(["callgrind_control", "-z", str(p.pid)], check=True, capture_output=True)
        send(n)
        subprocess.run(["callgrind_control", "-d", str(p.pid)], check=True, capture_output=True)
    finally:
        p.terminate()
        p.wait()
    dump = f"{out}.1"
    total = next(int(line.split()[1]) for line in open(dump).read().splitlines()
                 if line.startswith("totals:"))
    print(f"{total / n:,.0f} instructions per request over {n} ({dump})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
