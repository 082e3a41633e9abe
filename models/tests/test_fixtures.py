"""The committed fixtures are what the committed models compute now (they are not stale)."""
import json

import numpy as np
import onnxruntime as ort
import pytest

from pipeline import common, fixtures, preprocess, tabular

DATA = json.loads(fixtures.FIXTURES.read_text())


def _session(disease, model):
    return ort.InferenceSession(str(common.MODELS_DIR / disease / f"{model}.onnx"),
                                providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("row", DATA["tabular"], ids=lambda r: f"{r['disease']}-{r['source_row']}")
def test_tabular_fixture(row):
    feats = tabular.DATASETS[row["disease"]]["features"]
    assert list(row["input"]) == [f["name"] for f in feats]
    x = np.array([[np.nan if row["input"][f["name"]] is None else row["input"][f["name"]]
                   for f in feats]], np.float32)
    p = _session(row["disease"], "tabular").run(["probabilities"], {"features": x})[0][0]
    assert np.abs(p - np.array(row["probabilities"])).max() <= 1e-6


@pytest.mark.parametrize("item", DATA["image"],
                         ids=lambda r: r["file"] + (f"-{r['variant']}" if r.get("variant") else ""))
def test_image_fixture(item):
    x = preprocess.preprocess_file(fixtures.EXAMPLES / item["file"])
    model = item["model"] + (f".{item['variant']}" if item.get("variant") else "")
    logits = _session(item["disease"], model).run(["logits"], {"image": x})[0]
    assert np.abs(common.softmax(logits)[0] - np.array(item["probabilities"])).max() <= 1e-5


def test_fixtures_cover_both_tabular_models_and_missing_values():
    diseases = {r["disease"] for r in DATA["tabular"]}
    assert diseases == {"diabetes", "heart"}
    assert any(v is None for r in DATA["tabular"] for v in r["input"].values())
