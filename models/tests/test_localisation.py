"""The image models' class activation maps, against where the synthetic generators drew each
class's sign (pipeline/localisation.py): the figure each card states is what the maps give now,
and the retina maps point at the lesions well above chance."""
import json

import numpy as np
import pytest

from pipeline import common, localisation, synth_ecg, synth_retina


_MEASURED = {}


def measured(task):
    if task not in _MEASURED:
        _MEASURED[task] = localisation.measure(task)
    return _MEASURED[task]


@pytest.mark.parametrize("task", list(localisation.MODELS))
def test_each_card_states_what_its_maps_give_on_the_held_out_images(task):
    for path, fig in measured(task).items():
        card = json.loads((common.MODELS_DIR / path).read_text())
        stated = card["explanation"]["localisation"]
        assert stated["images"] == fig["images"], path
        assert abs(stated["peak_in_sign"] - fig["peak_in_sign"]) <= localisation.TOLERANCE, \
            (path, stated["peak_in_sign"], fig["peak_in_sign"])
        assert stated["chance"] == fig["chance"], path  # the masks alone: exact


def test_the_retina_maps_peak_on_lesions_well_above_chance():
    # (The ECG maps do not beat chance on every class; their cards and docs/explanations.md
    # say so.)
    for path, fig in measured("retina").items():
        assert fig["peak_in_sign"] >= fig["chance"] + 0.2, (path, fig)
        for label, c in fig["by_class"].items():
            assert c["peak_in_sign"] > c["chance"], (path, label, c)


def test_the_masks_are_drawn_with_the_image_and_follow_its_flip_and_rotation():
    """The image a mask comes with is the training data's image, pixel for pixel, and the
    mask sits on what was drawn: lesion pixels are darker or brighter than the retina around."""
    for grade in range(5):
        img, mask = synth_retina.render_with_lesions(grade, 11)
        assert np.array_equal(np.asarray(img), np.asarray(synth_retina.render(grade, 11)))
        assert (np.asarray(mask) > 0).any() == (grade > 0)
    for cls in range(4):
        img, mask = synth_ecg.render_with_signs(cls, 11)
        assert np.array_equal(np.asarray(img), np.asarray(synth_ecg.render(cls, 11)))
        if cls in (2, 3):
            assert (np.asarray(mask) > 0).any()
    # A grade-3 image's lesions: the mask marks haemorrhages (dark red) and spots, so its pixels
    # differ from the unmarked retina's in colour.
    img, mask = synth_retina.render_with_lesions(3, 5)
    x, m = np.asarray(img).astype(float), np.asarray(mask) > 128
    fundus = x.sum(axis=2) > 60
    assert abs(x[m & fundus].mean(axis=0) - x[~m & fundus].mean(axis=0)).max() > 10


def test_cells_marks_every_cell_holding_the_sign():
    sign = np.zeros((224, 224), bool)
    sign[0, 0] = sign[100, 200] = True
    held = localisation.cells(sign, (7, 7))
    assert held.sum() == 2 and held[0, 0] and held[3, 6]
    with pytest.raises(ValueError):
        localisation.cells(np.zeros((224, 224), bool), (5, 5))
