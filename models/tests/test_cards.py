"""The committed models and their cards agree: hashes, inputs/outputs, features, demo flags."""
import json

import numpy as np
import onnx
import pytest

from pipeline import common, tabular

CARDS = sorted(common.MODELS_DIR.glob("*/*.card.json"))


def test_the_tabular_models_exist():
    names = {f"{c.parent.name}/{c.name}" for c in CARDS}
    assert {"diabetes/tabular.card.json", "heart/tabular.card.json"} <= names


@pytest.mark.parametrize("card_path", CARDS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_card_matches_its_onnx_file(card_path):
    card = json.loads(card_path.read_text())
    onnx_path = card_path.parent / card["file"]
    assert common.sha256_file(onnx_path) == card["sha256"]
    assert onnx_path.stat().st_size == card["size_bytes"]
    m = onnx.load(str(onnx_path))
    graph_inputs = [i.name for i in m.graph.input if i.name not in {t.name for t in m.graph.initializer}]
    assert graph_inputs == [card["input"]["name"]]
    assert [o.name for o in m.graph.output] == [o["name"] for o in card["outputs"]]
    dims = [d.dim_value or -1 for d in m.graph.input[0].type.tensor_type.shape.dim]
    assert dims == card["input"]["shape"]
    assert card["load_cost"]["rss_added_bytes"] > 0
    assert card["disease"] == card_path.parent.name
    assert [c["index"] for c in card["classes"]] == list(range(len(card["classes"])))
    if card["modality"] == "tabular":
        assert len(card["features"]) == card["input"]["shape"][1]
        for f in card["features"]:
            assert f["min"] < f["max"], f
            if f["allowed"]:
                assert all(f["min"] <= v <= f["max"] for v in f["allowed"]), f
        assert card["metrics"]["parity_max_abs_prob_diff_xgboost_vs_onnxruntime"] <= 1e-5
    else:
        assert card["demo"] is True
        assert "synthetic" in card["notice"] and "not for clinical use" in card["notice"]
        assert card["preprocessing"]["layout"] == "NCHW"
        if "quantization" in card:
            # A variant: its parent exists and is the file it names, and the comparison with it
            # (on the parent's held-out set) is recorded.
            parent = card["quantization"]["from"]
            assert common.sha256_file(card_path.parent / parent["file"]) == parent["sha256"]
            assert 0 <= card["metrics"]["agreement_with_fp32"] <= 1
            assert card["metrics"]["compared_on"] > 0
            assert card["size_bytes"] < parent["size_bytes"]
        else:
            assert card["metrics"]["parity_max_abs_prob_diff_torch_vs_onnxruntime"] <= 1e-4


@pytest.mark.parametrize("name", list(tabular.DATASETS))
def test_cv_auc_is_reported_and_plausible(name):
    card = json.loads((common.MODELS_DIR / name / "tabular.card.json").read_text())
    m = card["metrics"]
    assert len(m["cv_roc_auc_folds"]) == 5
    assert 0.75 < m["cv_roc_auc_mean"] < 1.0


def test_data_quirks_become_missing_values():
    x, y, df = tabular.load("diabetes")
    cols = [f["source_column"] for f in tabular.DATASETS["diabetes"]["features"]]
    assert len(x) == 768 and y.sum() == 268
    # Zeros in Insulin become NaN, zeros in Pregnancies stay zeros.
    assert np.isnan(x[:, cols.index("Insulin")]).sum() == (df["Insulin"] == 0).sum() > 0
    assert not np.isnan(x[:, cols.index("Pregnancies")]).any()
    assert (x[:, cols.index("Pregnancies")] == 0).sum() > 0
    x, y, _ = tabular.load("heart")
    cols = [f["source_column"] for f in tabular.DATASETS["heart"]["features"]]
    assert np.isnan(x[:, cols.index("ca")]).sum() == 4
    assert np.isnan(x[:, cols.index("thal")]).sum() == 2
    assert set(np.unique(y)) == {0, 1} and len(y) == 303


@pytest.mark.parametrize("name", list(tabular.DATASETS))
def test_the_trees_file_is_the_cards_and_its_parity_fixture_covers_every_row(name):
    """The explainer's trees (TreeSHAP) are the file the card names, and the fixture the
    services' parity test reads holds XGBoost's contributions for every row of the data set,
    adding up to each row's margin."""
    card = json.loads((common.MODELS_DIR / name / "tabular.card.json").read_text())
    spec = card["explanation"]
    trees_path = common.MODELS_DIR / name / spec["file"]
    assert spec["method"] == "treeshap"
    assert common.sha256_file(trees_path) == spec["sha256"]
    assert trees_path.stat().st_size == spec["size_bytes"]
    trees = json.loads(trees_path.read_text())
    assert trees["num_features"] == len(card["features"])
    assert len(trees["trees"]) == card["training"]["hyperparameters"]["n_estimators"]
    fixture = json.loads((common.MODELS_DIR.parent / spec["parity"]["fixture"]).read_text())
    x, _, _ = tabular.load(name)
    assert len(fixture["rows"]) == len(x) == spec["parity"]["rows"]
    rows = np.array([[np.nan if v is None else v for v in r] for r in fixture["rows"]], np.float32)
    np.testing.assert_array_equal(rows, x)
    sums = np.array(fixture["contributions"]).sum(axis=1) + np.array(fixture["base_values"])
    np.testing.assert_allclose(sums, fixture["margins"], atol=1e-5)
