"""Preprocessing parity fixtures: small PNG inputs and the exact tensors the Python side makes of
them, for every filter, both resize kinds, crops, BGR, another scale and EXIF on or off.

    python -m pipeline.preprocess_fixtures

Writes models/examples/preprocess/ (inputs, `<case>.f32` raw little-endian float32 NCHW tensors
and `cases.json`). The services' own preprocessing must give the same tensors
(shared/serving/src/inputs/image.rs tests; PNG decoding is lossless, so they match to the last bit of each
8-bit value). `models/tests/test_preprocess.py` checks the committed files are what this code
makes now.
"""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from . import common, preprocess

FOLDER = common.MODELS_DIR / "examples" / "preprocess"
CASES_FILE = FOLDER / "cases.json"
INET = dict(mean=preprocess.MEAN, std=preprocess.STD)


def _inputs() -> dict[str, Image.Image]:
    """Smooth gradients with noise (every filter's lobes show), landscape, portrait, square,
    and a portrait stored sideways with an EXIF orientation."""
    rng = np.random.default_rng(20261202)

    def picture(w, h):
        y, x = np.mgrid[0:h, 0:w].astype(np.float64)
        base = np.stack([127 + 100 * np.sin(x / 7.0), 127 + 100 * np.cos(y / 5.0),
                         127 + 90 * np.sin((x + y) / 11.0)], -1)
        noisy = base + rng.normal(0, 30, base.shape)
        return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")

    return {"landscape": picture(97, 61), "portrait": picture(45, 80),
            "square": picture(33, 33), "tiny": picture(5, 3)}


CASES = [
    # (name, input, spec arguments)
    ("stretch-bilinear", "landscape", dict(size=(32, 24), **INET)),
    ("stretch-box", "landscape", dict(size=(40, 30), filter="box_antialiased", **INET)),
    ("stretch-hamming", "portrait", dict(size=(20, 50), filter="hamming_antialiased", **INET)),
    ("stretch-bicubic-up", "tiny", dict(size=(23, 17), filter="bicubic_antialiased", **INET)),
    ("stretch-lanczos", "landscape", dict(size=(31, 29), filter="lanczos_antialiased", **INET)),
    # Pillow 13 runs the vertical pass first here (the height shrinks by more than twice what
    # the width does); the rounding between the passes differs with the order.
    ("vertical-pass-first", "portrait", dict(size=(28, 20), filter="bicubic_antialiased", **INET)),
    ("stretch-lanczos-up", "square", dict(size=(70, 50), filter="lanczos_antialiased", **INET)),
    ("shorter-crop-bilinear", "landscape", dict(shorter_side=36, crop=(32, 32), **INET)),
    ("shorter-crop-bicubic", "portrait", dict(shorter_side=29, crop=(24, 21),
                                               filter="bicubic_antialiased", **INET)),
    ("shorter-crop-odd", "landscape", dict(shorter_side=29, crop=(24, 24),
                                           filter="bilinear_antialiased", **INET)),
    ("stretch-crop-bgr", "square", dict(size=(40, 40), crop=(30, 25), channel_order="BGR",
                                        **INET)),
    # A Caffe-style model: BGR, pixel values 0..255 minus per-channel means.
    ("bgr-caffe-scale", "portrait", dict(size=(28, 28), channel_order="BGR", scale=1.0,
                                         mean=(103.939, 116.779, 123.68), std=(1.0, 1.0, 1.0))),
    ("exif-applied", "sideways", dict(shorter_side=30, crop=(26, 26), **INET)),
    ("exif-ignored", "sideways", dict(shorter_side=30, crop=(26, 26), exif_orientation=False,
                                      **INET)),
]


def build() -> list[dict]:
    FOLDER.mkdir(parents=True, exist_ok=True)
    inputs = _inputs()
    for name, img in inputs.items():
        img.save(FOLDER / f"{name}.png")
    # Stored turned on its side, with EXIF orientation 6 (rotate 90° clockwise to display).
    exif = Image.Exif()
    exif[0x0112] = 6
    inputs["portrait"].transpose(Image.ROTATE_90).save(FOLDER / "sideways.png",
                                                       exif=exif.tobytes())
    out = []
    for name, src, args in CASES:
        spec = preprocess.make_spec(**args)
        x = preprocess.preprocess_file(FOLDER / f"{src}.png", spec)
        x.astype("<f4").tofile(FOLDER / f"{name}.f32")
        out.append({"name": name, "input": f"{src}.png", "preprocessing": spec,
                    "shape": list(x.shape), "tensor": f"{name}.f32"})
    CASES_FILE.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {CASES_FILE}: {len(out)} cases")
    return out


if __name__ == "__main__":
    build()
