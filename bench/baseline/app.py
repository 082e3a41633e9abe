"""The obvious Python rewrite, for comparison only: the same four ONNX files served by FastAPI on
ONNX Runtime, as a team would write it to replace the Flask original. `medchain-bench baseline`
runs it beside medchain with the same load generator (bench/src/baselinebench.rs). It is not
part of medchain and is never deployed.

Written the way that rewrite would be: every model loaded at start-up, ONNX Runtime's default
session options, Pillow for decoding and resizing, pydantic-free JSON handling, one uvicorn
worker (as on a 512 MB instance). It validates what the models need (every feature present,
numeric, in the card's range) and preprocesses images as the cards say, so its answers equal
medchain's (bench/baseline/test_app.py checks them against the committed fixtures).

Run: BASELINE_MODELS_DIR=models python -m uvicorn app:app --app-dir bench/baseline --port 8090
"""

import io
import json
import math
import os
import pathlib

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, File, Request, UploadFile
from fastapi.responses import JSONResponse
from PIL import Image, ImageOps

MODELS_DIR = pathlib.Path(os.environ.get("BASELINE_MODELS_DIR", "models"))
CARDS = {
    ("diabetes", "tabular"): "diabetes/tabular.card.json",
    ("diabetes", "retina"): "diabetes/retina.card.json",
    ("heart", "tabular"): "heart/tabular.card.json",
    ("heart", "ecg"): "heart/ecg.card.json",
}
MAX_UPLOAD = 10 * 1024 * 1024


class Model:
    def __init__(self, card_path: pathlib.Path):
        self.card = json.loads(card_path.read_text())
        self.session = ort.InferenceSession(
            str(card_path.parent / self.card["file"]), providers=["CPUExecutionProvider"]
        )
        self.input = self.card["input"]["name"]
        self.labels = [c["label"] for c in self.card["classes"]]

    def answer(self, probabilities: np.ndarray) -> dict:
        p = [float(x) for x in probabilities]
        best = int(np.argmax(probabilities))
        return {
            "model": self.card["model_id"],
            "class_index": best,
            "label": self.labels[best],
            "probability": p[best],
            "probabilities": p,
            "notice": self.card["notice"],
        }


MODELS = {key: Model(MODELS_DIR / card) for key, card in CARDS.items()}
app = FastAPI()


def bad(detail: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


def features_row(model: Model, body) -> np.ndarray | str:
    """The card's features in order as a [1, n] float32 row (NaN for a missing value), or what
    is wrong with them."""
    if not isinstance(body, dict):
        return "the body must be a JSON object of features"
    row = []
    for f in model.card["features"]:
        v = body.get(f["name"])
        if v is None:
            if not f["nullable"]:
                return f"{f['name']} is required"
            row.append(math.nan)
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return f"{f['name']} must be a number"
        if not f["min"] <= v <= f["max"]:
            return f"{f['name']} must be between {f['min']} and {f['max']}"
        if f["allowed"] is not None and v not in f["allowed"]:
            return f"{f['name']} must be one of {f['allowed']}"
        row.append(v)
    return np.array([row], dtype=np.float32)


def image_tensor(model: Model, data: bytes) -> np.ndarray:
    """Encoded image -> [1, 3, H, W] float32 as the card's preprocessing says."""
    spec = model.card["preprocessing"]
    with Image.open(io.BytesIO(data)) as img:
        img = ImageOps.exif_transpose(img) if spec["exif_orientation"] else img
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            img = Image.fromarray((np.asarray(img, dtype=np.uint32) >> 8).astype(np.uint8), "L")
        size = (spec["resize"]["width"], spec["resize"]["height"])
        pixels = np.asarray(img.convert("RGB").resize(size, Image.BILINEAR), dtype=np.float32)
    x = pixels * np.float32(spec["scale"])
    x = (x - np.array(spec["mean"], np.float32)) / np.array(spec["std"], np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


@app.get("/health")
def health():
    return {"status": "ok", "models": [m.card["model_id"] for m in MODELS.values()]}


@app.post("/predict/{disease}/tabular")
async def predict_tabular(disease: str, request: Request):
    model = MODELS.get((disease, "tabular"))
    if model is None:
        return bad(f"unknown disease {disease}", 404)
    try:
        body = await request.json()
    except ValueError:
        return bad("the body is not JSON")
    row = features_row(model, body)
    if isinstance(row, str):
        return bad(row)
    probabilities = model.session.run(["probabilities"], {model.input: row})[0][0]
    return model.answer(probabilities)


@app.post("/predict/{disease}/{kind}")
def predict_image(disease: str, kind: str, image: UploadFile = File(...)):
    # A plain `def`: FastAPI runs it in its thread pool, and ONNX Runtime releases the GIL.
    model = MODELS.get((disease, kind))
    if model is None or kind == "tabular":
        return bad(f"unknown model {disease}/{kind}", 404)
    data = image.file.read(MAX_UPLOAD + 1)
    if len(data) > MAX_UPLOAD:
        return bad("the image is larger than 10 MiB", 413)
    try:
        x = image_tensor(model, data)
    except (OSError, ValueError) as e:
        return bad(f"the image could not be decoded: {e}")
    logits = model.session.run(None, {model.input: x})[0][0]
    e = np.exp(logits - logits.max())
    return model.answer(e / e.sum())
