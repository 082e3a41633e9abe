"""The one image preprocessing both training and serving follow (the Rust services mirror it).

decode -> apply EXIF orientation -> RGB, 8 bits per channel (grey is replicated, alpha is
dropped as PIL's convert("RGB") does, 16-bit keeps its high byte) -> resize the whole
image to SIZE x SIZE (aspect ratio not kept, no crop) with an antialiased bilinear (triangle)
filter -> scale to [0, 1] -> subtract ImageNet mean, divide by std -> NCHW float32.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

SIZE = 224
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

SPEC = {
    "resize": {"width": SIZE, "height": SIZE, "filter": "bilinear_antialiased",
               "keep_aspect": False, "crop": None},
    "exif_orientation": True,
    "channel_order": "RGB",
    "alpha": "dropped",
    "scale": 1.0 / 255.0,
    "mean": list(MEAN),
    "std": list(STD),
    "layout": "NCHW",
    "dtype": "float32",
}


def to_rgb(img: Image.Image) -> Image.Image:
    """Applies EXIF orientation and converts any mode (L, LA, RGBA, I;16, CMYK, P) to RGB8."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.uint32) >> 8
        img = Image.fromarray(arr.astype(np.uint8), mode="L")
    return img.convert("RGB")


def resize(img: Image.Image) -> np.ndarray:
    """RGB image -> SIZE x SIZE x 3 uint8."""
    return np.asarray(img.resize((SIZE, SIZE), Image.BILINEAR), dtype=np.uint8)


def normalise(batch_hwc_u8: np.ndarray) -> np.ndarray:
    """[N,H,W,3] uint8 -> [N,3,H,W] float32, ImageNet-normalised."""
    x = batch_hwc_u8.astype(np.float32) / 255.0
    x = (x - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def preprocess_file(path) -> np.ndarray:
    """Image file -> [1,3,SIZE,SIZE] float32, exactly as the services do."""
    with Image.open(path) as im:
        return normalise(resize(to_rgb(im))[None])
