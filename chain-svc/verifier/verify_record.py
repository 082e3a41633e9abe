#!/usr/bin/env python3
"""Checks a medchain audit record on chain by yourself: nothing here comes from medchain's code.

Given only a JSON-RPC URL, the audit contract's address, the record's receipt (what chain-svc
answered when it took the record: at least `prediction_id` and `salt`) and the original input,
it recomputes the input's commitment and asks the contract — through web3.py, an Ethereum client
independent of the service's own (alloy) — whether the record is on chain and holds that
commitment.

    python verify_record.py --rpc http://127.0.0.1:8545 --contract 0x… \\
        --receipt receipt.json (--features features.json | --image scan.jpg | --digest 0x…)

Prints one JSON line {"on_chain", "matches", ...}; exits 0 when the record is on chain and
matches, 1 when it is absent or does not match, 2 on bad arguments or an unreachable node.

The definitions it follows (see the project's README, "privacy"):
  * input digest: SHA-256 of the uploaded image's bytes; for tabular input, of its canonical JSON
    — the features that are not null, keys sorted by their UTF-8 bytes, each value written as the
    shortest decimal that reads back as the same IEEE double (`148.0`, `33.6`, `1e-7`,
    `1e+16`), no spaces: `{"age":50.0,"bmi":33.6,...}`;
  * commitment: SHA-256("medchain/input/v1" ‖ salt ‖ digest), 32-byte salt and digest;
  * prediction id on chain: the UUID's 16 bytes, left-aligned in a bytes32.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import uuid

# The one function used, written here from the contract's interface (not read from medchain).
ABI = [{
    "name": "getRecord", "type": "function", "stateMutability": "view",
    "inputs": [{"name": "predictionId", "type": "bytes32"}],
    "outputs": [{"name": "", "type": "tuple", "components": [
        {"name": "patientRef", "type": "bytes32"},
        {"name": "modelIdHash", "type": "bytes32"},
        {"name": "inputCommitment", "type": "bytes32"},
        {"name": "timestamp", "type": "uint64"},
        {"name": "recorder", "type": "address"},
        {"name": "probabilityBps", "type": "uint16"},
        {"name": "disease", "type": "uint8"},
        {"name": "modality", "type": "uint8"},
        {"name": "label", "type": "uint8"},
    ]}],
}]
INPUT_DOMAIN = b"medchain/input/v1"


def shortest(x: float) -> str:
    """The shortest round-tripping decimal, written as the service (serde_json) writes it:
    Python's repr() with the exponent's zero padding dropped (`1e-07` -> `1e-7`; `1e+16`
    stays)."""
    if not math.isfinite(x):
        raise ValueError("not a finite number")
    r = repr(float(x))
    if "e" in r:
        mantissa, exp = r.split("e")
        sign = exp[0] if exp[0] in "+-" else ""
        r = f"{mantissa}e{sign}{int(exp.lstrip('+-'))}"
    return r


def canonical_features(features: dict) -> bytes:
    items = []
    for k, v in features.items():
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"feature {k!r} is not a number")
        items.append((k, float(v)))
    items.sort(key=lambda kv: kv[0].encode())
    body = ",".join(f"{json.dumps(k, ensure_ascii=False)}:{shortest(v)}" for k, v in items)
    return ("{" + body + "}").encode()


def hex32(s: str, what: str) -> bytes:
    b = bytes.fromhex(s.removeprefix("0x"))
    if len(b) != 32:
        raise ValueError(f"{what} must be 32 bytes of hex")
    return b


def commitment(salt: bytes, digest: bytes) -> bytes:
    return hashlib.sha256(INPUT_DOMAIN + salt + digest).digest()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rpc", required=True)
    ap.add_argument("--contract", required=True)
    ap.add_argument("--receipt", required=True, help="the receipt JSON (a file, or - for stdin)")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--features", help="the tabular input as JSON (a file)")
    src.add_argument("--image", help="the uploaded image file")
    src.add_argument("--digest", help="the input digest, if you computed it yourself")
    a = ap.parse_args(argv)
    try:
        receipt = json.load(sys.stdin if a.receipt == "-" else open(a.receipt))
        salt = hex32(receipt["salt"], "salt")
        pid = uuid.UUID(receipt["prediction_id"]).bytes + bytes(16)
        if a.features:
            digest = hashlib.sha256(canonical_features(json.load(open(a.features)))).digest()
        elif a.image:
            digest = hashlib.sha256(open(a.image, "rb").read()).digest()
        else:
            digest = hex32(a.digest, "digest")
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(json.dumps({"error": f"bad input: {e}"}))
        return 2
    expected = commitment(salt, digest)

    from web3 import Web3

    w3 = Web3(Web3.HTTPProvider(a.rpc, request_kwargs={"timeout": 10}))
    try:
        address = Web3.to_checksum_address(a.contract)
        if not w3.eth.get_code(address):
            print(json.dumps({"error": f"no contract at {address}"}))
            return 2
        rec = w3.eth.contract(address=address, abi=ABI).functions.getRecord(pid).call()
    except Exception as e:  # noqa: BLE001 — an unreachable node or a foreign contract
        print(json.dumps({"error": f"the node could not be asked: {type(e).__name__}: {e}"}))
        return 2
    patient_ref, model_id_hash, on_chain_commitment, timestamp = rec[0], rec[1], rec[2], rec[3]
    out = {"prediction_id": receipt["prediction_id"], "on_chain": timestamp != 0,
           "matches": timestamp != 0 and on_chain_commitment == expected,
           "commitment": "0x" + expected.hex()}
    if timestamp:
        out.update(recorded_at_unix=timestamp, on_chain_commitment="0x" + on_chain_commitment.hex(),
                   model_id_hash="0x" + model_id_hash.hex(), patient_ref="0x" + patient_ref.hex(),
                   label=rec[8], probability_bps=rec[5])
        if "patient_ref" in receipt:
            out["patient_ref_matches_receipt"] = "0x" + patient_ref.hex() == receipt["patient_ref"].lower()
    print(json.dumps(out))
    return 0 if out["matches"] else 1


if __name__ == "__main__":
    sys.exit(main())
