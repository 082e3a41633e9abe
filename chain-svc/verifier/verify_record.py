#!/usr/bin/env python3
"""Checks a medchain audit record on chain by yourself: nothing here comes from medchain's code.

Given only a JSON-RPC URL, the audit contract's address, the record's receipt (what chain-svc
answered when it took the record, as the prediction's `audit`) and the original input, it
recomputes the input's commitment and the record's hash and asks the chain — through web3.py, an
Ethereum client independent of the service's own (alloy) — whether the contract committed to
that record.

    python verify_record.py --rpc http://127.0.0.1:8545 --contract 0x… \\
        --receipt receipt.json (--features features.json | --image scan.jpg | --digest 0x…) \\
        [--from-block N]

Prints one JSON line {"on_chain", "matches", ...}; exits 0 when the record is on chain and
matches, 1 when it is absent or does not match, 2 on bad arguments or an unreachable node.

The definitions it follows (see the project's docs, "the audit trail"):
  * input digest: SHA-256 of the uploaded image's bytes; for tabular input, of its canonical JSON
    — the features that are not null, keys sorted by their UTF-8 bytes, each value written as the
    shortest decimal that reads back as the same IEEE double (`148.0`, `33.6`, `1e-7`,
    `1e+16`), no spaces: `{"age":50.0,"bmi":33.6,...}`;
  * commitment: SHA-256("medchain/input/v1" ‖ salt ‖ digest), 32-byte salt and digest;
  * prediction id on chain: the UUID's 16 bytes, left-aligned in a bytes32;
  * record hash: keccak256(abi.encode(bytes32 predictionId, bytes32 patientRef,
    bytes32 modelIdHash, bytes32 inputCommitment, uint8 disease, uint8 modality, uint8 label,
    uint16 probabilityBps)), disease 1 = diabetes, 2 = heart, modality 1 = tabular, 2 = image;
  * on chain: the contract's event PredictionCommitted(bytes32 indexed predictionId,
    bytes32 indexed patientRef, bytes32 recordHash); the first one for an id counts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import uuid

# Written here from the contract's interface (not read from medchain).
EVENT = "PredictionCommitted(bytes32,bytes32,bytes32)"
DISEASES = {"diabetes": 1, "heart": 2}
MODALITIES = {"tabular": 1, "image": 2}
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


def code_of(table: dict, value, what: str) -> int:
    if isinstance(value, int):
        return value
    if value not in table:
        raise ValueError(f"{what} must be one of {', '.join(table)}")
    return table[value]


def record_hash(pid: bytes, receipt: dict, input_commitment: bytes) -> bytes:
    from eth_abi import encode
    from web3 import Web3

    values = [pid, hex32(receipt["patient_ref"], "patient_ref"),
              hex32(receipt["model_id_hash"], "model_id_hash"), input_commitment,
              code_of(DISEASES, receipt["disease"], "disease"),
              code_of(MODALITIES, receipt["modality"], "modality"),
              int(receipt["label"]), int(receipt["probability_bps"])]
    types = ["bytes32"] * 4 + ["uint8"] * 3 + ["uint16"]
    return bytes(Web3.keccak(encode(types, values)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rpc", required=True)
    ap.add_argument("--contract", required=True)
    ap.add_argument("--receipt", required=True, help="the receipt JSON (a file, or - for stdin)")
    ap.add_argument("--from-block", type=int, default=0,
                    help="search the chain from this block (the contract's deployment block)")
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
        expected_commitment = commitment(salt, digest)
        expected = record_hash(pid, receipt, expected_commitment)
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(json.dumps({"error": f"bad input: {e}"}))
        return 2

    from web3 import Web3

    w3 = Web3(Web3.HTTPProvider(a.rpc, request_kwargs={"timeout": 10}))
    try:
        address = Web3.to_checksum_address(a.contract)
        if not w3.eth.get_code(address):
            print(json.dumps({"error": f"no contract at {address}"}))
            return 2
        logs = w3.eth.get_logs({"address": address, "fromBlock": a.from_block, "toBlock": "latest",
                                "topics": [Web3.keccak(text=EVENT), "0x" + pid.hex()]})
    except Exception as e:  # noqa: BLE001 — an unreachable node or a foreign contract
        print(json.dumps({"error": f"the node could not be asked: {type(e).__name__}: {e}"}))
        return 2
    logs = sorted(logs, key=lambda l: (l["blockNumber"], l["logIndex"]))
    out = {"prediction_id": receipt["prediction_id"], "on_chain": bool(logs), "matches": False,
           "commitment": "0x" + expected_commitment.hex(), "record_hash": "0x" + expected.hex(),
           "commitments_on_chain": len(logs)}
    if logs:
        first = logs[0]
        on_chain_hash = bytes(first["data"])[-32:]
        patient_ref = bytes(first["topics"][2])
        out.update(matches=on_chain_hash == expected,
                   on_chain_record_hash="0x" + on_chain_hash.hex(),
                   patient_ref="0x" + patient_ref.hex(),
                   patient_ref_matches_receipt="0x" + patient_ref.hex()
                   == receipt["patient_ref"].lower(),
                   block_number=first["blockNumber"],
                   tx_hash="0x" + bytes(first["transactionHash"]).hex(),
                   recorded_at_unix=w3.eth.get_block(first["blockNumber"])["timestamp"])
        out["matches"] = out["matches"] and out["patient_ref_matches_receipt"]
    print(json.dumps(out))
    return 0 if out["matches"] else 1


if __name__ == "__main__":
    sys.exit(main())
