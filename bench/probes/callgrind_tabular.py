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

    python bench/probes/callgrind_tabular.py --gateway GATEWAY DIABETES_SVC [N] [ENV=VALUE ...]

profiles the gateway instead: diabetes-svc runs as it is, the gateway under callgrind in front of
it, and the requests go to /api/v1/diabetes/predict/tabular signed in with an API key, as a
client sends them (ENV=VALUE pairs go to the gateway).
"""
import hashlib
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(port: int) -> None:
    for _ in range(600):
        try:
            c = http.client.HTTPConnection("127.0.0.1", port)
            c.request("GET", "/healthz")
            c.getresponse().read()
            return
        except OSError:
            time.sleep(0.1)


def main() -> int:
    args = sys.argv[1:]
    gateway = None
    if args and args[0] == "--gateway":
        gateway, args = args[1], args[2:]
    binary = args[0]
    n = int(args[1]) if len(args) > 1 and "=" not in args[1] else 1000
    extra = dict(a.split("=", 1) for a in args[1:] if "=" in a)
    port = free_port()
    out = os.path.join(tempfile.mkdtemp(), "callgrind.out")
    valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
    env = dict(os.environ, DIABETES__SERVER__PORT=str(port), DIABETES__CHAIN__URL="",
               DIABETES__SERVER__WORKERS="1", **({} if gateway else extra))
    svc = subprocess.Popen(([] if gateway else valgrind) + [binary], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_healthy(port)
    headers = {"Content-Type": "application/json", "x-request-id": "probe-0123456789"}
    path = "/v1/predict/tabular"
    p = svc
    if gateway:
        key = "mk_probe_clinician_key_0123456789abcdef"
        gw_port = free_port()
        genv = dict(os.environ, GATEWAY__SERVER__PORT=str(gw_port), GATEWAY__SERVER__WORKERS="1",
                    GATEWAY__UPSTREAMS__DIABETES=f"http://127.0.0.1:{port}",
                    GATEWAY__CLIENTS__KEYS="probe:clinician:"
                    + hashlib.sha256(key.encode()).hexdigest(),
                    GATEWAY__CLIENTS__RATE_PER_SECOND="1000000",
                    GATEWAY__CLIENTS__RATE_BURST="1000000",
                    MEDCHAIN_DATA_DIR=tempfile.mkdtemp(), **extra)
        p = subprocess.Popen(valgrind + [gateway], env=genv, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        wait_healthy(gw_port)
        port, path = gw_port, "/api/v1/diabetes/predict/tabular"
        headers["Authorization"] = f"Bearer {key}"
    body = json.dumps({"pregnancies": 2, "glucose": 120, "blood_pressure": 70,
                       "skin_thickness": None, "insulin": 80, "bmi": 28.4,
                       "diabetes_pedigree_function": 0.35, "age": 41})
    c = http.client.HTTPConnection("127.0.0.1", port)

    def send(k: int) -> None:
        for _ in range(k):
            c.request("POST", path, body, headers)
            r = c.getresponse()
            r.read()
            assert r.status == 200, r.status

    try:
        send(300)
        subprocess.run(["callgrind_control", "-z", str(p.pid)], check=True, capture_output=True)
        send(n)
        subprocess.run(["callgrind_control", "-d", str(p.pid)], check=True, capture_output=True)
    finally:
        for proc in {p, svc}:
            proc.terminate()
            proc.wait()
    dump = f"{out}.1"
    total = next(int(line.split()[1]) for line in open(dump).read().splitlines()
                 if line.startswith("totals:"))
    print(f"{total / n:,.0f} instructions per request over {n} ({dump})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
