"""The preprocessing spec: the committed parity cases are what the Python side makes now, and
the torchvision conventions it mirrors hold (shorter-side size, centre-crop offsets)."""
import json

import numpy as np
import pytest
from PIL import Image

from pipeline import preprocess, preprocess_fixtures

CASES = json.loads(preprocess_fixtures.CASES_FILE.read_text())


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_committed_case_is_what_the_code_makes(case):
    folder = preprocess_fixtures.FOLDER
    x = preprocess.preprocess_file(folder / case["input"], case["preprocessing"])
    want = np.fromfile(folder / case["tensor"], "<f4").reshape(case["shape"])
    assert x.shape == want.shape
    assert np.array_equal(x, want)


def test_cases_cover_every_filter_and_option():
    specs = [c["preprocessing"] for c in CASES]
    assert {s["resize"]["filter"] for s in specs} == set(preprocess.FILTERS)
    assert {s["resize"]["keep_aspect"] for s in specs} == {True, False}
    assert {s["channel_order"] for s in specs} == {"RGB", "BGR"}
    assert {s["exif_orientation"] for s in specs} == {True, False}
    assert any(s["crop"] for s in specs) and any(s["scale"] != 1 / 255 for s in specs)


def test_torchvision_resize_and_center_crop_agree_on_pil_images():
    torch = pytest.importorskip("torch")
    from torchvision import transforms as T

    img = Image.open(preprocess_fixtures.FOLDER / "landscape.png").convert("RGB")
    for shorter, crop in ((29, 24), (36, 32), (61, 61)):
        spec = preprocess.make_spec(shorter_side=shorter, crop=(crop, crop))
        tv = T.Compose([T.Resize(shorter), T.CenterCrop(crop), T.ToTensor(),
                        T.Normalize(preprocess.MEAN, preprocess.STD)])
        with torch.no_grad():
            want = tv(img).numpy()[None]
        assert np.abs(preprocess.preprocess_image(img, spec) - want).max() <= 1e-6


@pytest.mark.parametrize("bad, msg", [
    (dict(shorter_side=256), "needs a crop|add a crop"),
    (dict(shorter_side=200, crop=(224, 224)), "larger than the resize"),
    (dict(size=(224, 224), filter="nearest"), "unknown filter"),
    (dict(size=(224, 224), channel_order="RGBA"), "RGB or BGR"),
    (dict(size=(4096, 224)), "1..2048"),
])
def test_bad_specs_are_refused(bad, msg):
    with pytest.raises(ValueError, match=msg):
        preprocess.make_spec(**bad)
