"""Drives a medchain disease service with the real Open Inference Protocol client
(`tritonclient[http]`, as an operator's tooling would) and prints what it got as JSON, for
the end-to-end test (tests/tests/e2e/v2_clients.rs) to compare with the JSON API's answers.

    python tests/clients/v2_client.py --url 127.0.0.1:8081 --header x-internal-token=… \
        --disease diabetes --image models/examples/retina/0-no_dr-1.jpg --rows rows.json

`--url` may carry a base path (`127.0.0.1:8080/api/v1/diabetes`: through the gateway). The
image is sent as the `image_bytes` BYTES input and, preprocessed here by the model pipeline's
own Python preprocessing (models/pipeline/preprocess.py), as the model's FP32 tensor.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "models"))
from pipeline import preprocess  # noqa: E402  (the models folder is not a package on the path)


def infer(client, model, inputs, outputs, headers):
    return client.infer(model, inputs, outputs=outputs, headers=headers)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--header", action="append", default=[], help="name=value, on every call")
    ap.add_argument("--disease", required=True)
    ap.add_argument("--image_model", required=True, help="retina or ecg")
    ap.add_argument("--image", required=True)
    ap.add_argument("--rows", required=True, help="a JSON file: feature rows, NaN as null")
    args = ap.parse_args()
    headers = dict(h.split("=", 1) for h in args.header)
    client = httpclient.InferenceServerClient(url=args.url)
    tab, img = f"{args.disease}-tabular", f"{args.disease}-{args.image_model}"
    out = {
        "live": client.is_server_live(headers=headers),
        "ready": client.is_server_ready(headers=headers),
        "server": client.get_server_metadata(headers=headers),
        "tabular_metadata": client.get_model_metadata(tab, headers=headers),
        "image_metadata": client.get_model_metadata(img, headers=headers),
        "image_ready_before": client.is_model_ready(img, headers=headers),
    }

    listed = json.loads(Path(args.rows).read_text())
    rows = np.array([[np.nan if v is None else v for v in r] for r in listed], dtype=np.float32)
    # JSON has no NaN (the missing value): in JSON, only the rows without one.
    complete = [i for i, r in enumerate(listed) if None not in r]
    out["tabular_json_rows"] = complete
    for binary in (False, True):
        sent = rows if binary else rows[complete]
        x = httpclient.InferInput("features", list(sent.shape), "FP32")
        x.set_data_from_numpy(sent, binary_data=binary)
        wanted = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("label", "probabilities")]
        r = infer(client, tab, [x], wanted, headers)
        key = "binary" if binary else "json"
        out[f"tabular_{key}"] = r.as_numpy("probabilities").astype(float).tolist()
        out[f"tabular_{key}_label"] = r.as_numpy("label").astype(int).tolist()
    # Outputs left to the client's default (binary), the response parameters read back.
    x = httpclient.InferInput("features", list(rows.shape), "FP32")
    x.set_data_from_numpy(rows)
    r = infer(client, tab, [x], None, headers)
    out["tabular_default"] = r.as_numpy("probabilities").astype(float).tolist()
    out["parameters"] = r.get_response().get("parameters", {})

    data = Path(args.image).read_bytes()
    files = np.array([data, data], dtype=np.object_)
    x = httpclient.InferInput("image_bytes", [2], "BYTES")
    x.set_data_from_numpy(files, binary_data=True)
    r = infer(client, img, [x], [httpclient.InferRequestedOutput("probabilities")], headers)
    out["image_bytes"] = r.as_numpy("probabilities").astype(float).tolist()

    spec = json.loads((ROOT / "models" / args.disease / f"{args.image_model}.card.json").read_text())["preprocessing"]
    tensor = preprocess.preprocess_file(args.image, spec)
    if tensor.ndim == 3:
        tensor = tensor[np.newaxis]
    x = httpclient.InferInput("image", list(tensor.shape), "FP32")
    x.set_data_from_numpy(tensor.astype(np.float32), binary_data=True)
    r = infer(client, img, [x], [httpclient.InferRequestedOutput("probabilities")], headers)
    out["image_tensor"] = r.as_numpy("probabilities").astype(float).tolist()
    out["image_ready_after"] = client.is_model_ready(img, headers=headers)

    try:
        client.get_model_metadata(f"{args.disease}-nothing", headers=headers)
        out["unknown_model"] = None
    except InferenceServerException as e:
        out["unknown_model"] = {"status": e.status(), "message": e.message()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
