"""Image preprocessing as a model card describes it (the Rust services implement the same steps).

decode -> apply EXIF orientation (when `exif_orientation`) -> RGB, 8 bits per channel (grey is
replicated, alpha is dropped as PIL's convert("RGB") does, 16-bit keeps its high byte) -> resize
with one of Pillow's antialiased filters, either the whole image to width x height (aspect ratio
not kept) or its shorter side to `shorter_side` (torchvision's `Resize(n)` on a PIL image) ->
centre crop (torchvision's `CenterCrop`) -> channel order -> `x * scale` (`x / 255` for a scale
of 1/255, as `ToTensor` divides) -> subtract mean, divide by std -> NCHW float32.

`SPEC` is what medchain's own image models were trained with: the whole image to 224 x 224,
bilinear, ImageNet mean and std.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

SIZE = 224
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
# Card filter name -> Pillow filter. Pillow's NEAREST is not antialiased and is not offered.
FILTERS = {
    "box_antialiased": Image.BOX,
    "bilinear_antialiased": Image.BILINEAR,
    "hamming_antialiased": Image.HAMMING,
    "bicubic_antialiased": Image.BICUBIC,
    "lanczos_antialiased": Image.LANCZOS,
}
# torchvision's InterpolationMode names -> card filter names.
INTERPOLATIONS = {name.split("_")[0]: name for name in FILTERS}
MAX_SIDE = 2048  # the services refuse larger resizes and crops (card.rs MAX_INPUT_SIDE)

SPEC = {
    "resize": {"width": SIZE, "height": SIZE, "filter": "bilinear_antialiased",
               "keep_aspect": False},
    "crop": None,
    "exif_orientation": True,
    "channel_order": "RGB",
    "alpha": "dropped",
    "scale": 1.0 / 255.0,
    "mean": list(MEAN),
    "std": list(STD),
    "layout": "NCHW",
    "dtype": "float32",
}


def make_spec(*, size=None, shorter_side=None, crop=None, filter="bilinear_antialiased",
              mean=MEAN, std=STD, scale=1.0 / 255.0, channel_order="RGB",
              exif_orientation=True) -> dict:
    """A card `preprocessing` block; `size` and `crop` are (width, height)."""
    if (size is None) == (shorter_side is None):
        raise ValueError("give either a fixed resize size or a shorter side")
    if filter not in FILTERS:
        raise ValueError(f"unknown filter {filter!r} (one of {', '.join(FILTERS)})")
    if channel_order not in ("RGB", "BGR"):
        raise ValueError(f"channel order {channel_order!r}: RGB or BGR")
    if size is not None:
        resize = {"width": int(size[0]), "height": int(size[1]), "filter": filter,
                  "keep_aspect": False}
    else:
        resize = {"shorter_side": int(shorter_side), "filter": filter, "keep_aspect": True}
        if crop is None:
            raise ValueError("a shorter-side resize gives images of varying size: add a crop")
    spec = dict(SPEC, resize=resize,
                crop=None if crop is None else {"width": int(crop[0]), "height": int(crop[1])},
                exif_orientation=bool(exif_orientation), channel_order=channel_order,
                scale=float(scale), mean=[float(m) for m in mean], std=[float(s) for s in std])
    check(spec)
    return spec


def check(spec: dict):
    """What the services check when they read the card (shared/serving/src/card.rs)."""
    w, h = input_size(spec)
    sides = [w, h] + [v for k, v in spec["resize"].items() if k in ("width", "height",
                                                                     "shorter_side")]
    if any(not 1 <= v <= MAX_SIDE for v in sides):
        raise ValueError(f"sizes must be 1..{MAX_SIDE} pixels")
    r, c = spec["resize"], spec.get("crop")
    if c:
        limit = (r["shorter_side"],) * 2 if r["keep_aspect"] else (r["width"], r["height"])
        if c["width"] > limit[0] or c["height"] > limit[1]:
            raise ValueError(f"the crop {c['width']}x{c['height']} is larger than the resize")
    if min(spec["std"]) <= 0 or spec["scale"] <= 0:
        raise ValueError("std and scale must be positive")


def input_size(spec: dict) -> tuple[int, int]:
    """(width, height) of the model's input."""
    if spec.get("crop"):
        return spec["crop"]["width"], spec["crop"]["height"]
    return spec["resize"]["width"], spec["resize"]["height"]


def resized_size(spec: dict, w: int, h: int) -> tuple[int, int]:
    """torchvision's `_compute_resized_output_size` for `Resize(n)`, or the fixed size."""
    r = spec["resize"]
    if not r["keep_aspect"]:
        return r["width"], r["height"]
    s = r["shorter_side"]
    if w <= h:
        return s, int(s * h / w)
    return int(s * w / h), s


def to_rgb(img: Image.Image, exif_orientation: bool = True) -> Image.Image:
    """Applies EXIF orientation and converts any mode (L, LA, RGBA, I;16, CMYK, P) to RGB8."""
    if exif_orientation:
        img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.uint32) >> 8
        img = Image.fromarray(arr.astype(np.uint8), mode="L")
    return img.convert("RGB")


def resize(img: Image.Image, spec: dict = SPEC) -> np.ndarray:
    """RGB image -> resized and centre-cropped H x W x 3 uint8 (torchvision's Resize +
    CenterCrop on a PIL image, crop offsets `int(round((size - crop) / 2))`)."""
    size = resized_size(spec, *img.size)
    out = np.asarray(img.resize(size, FILTERS[spec["resize"]["filter"]]), dtype=np.uint8)
    if spec.get("crop"):
        cw, ch = spec["crop"]["width"], spec["crop"]["height"]
        top = int(round((size[1] - ch) / 2.0))
        left = int(round((size[0] - cw) / 2.0))
        out = out[top:top + ch, left:left + cw]
    return out


def normalise(batch_hwc_u8: np.ndarray, spec: dict = SPEC) -> np.ndarray:
    """[N,H,W,3] uint8 -> [N,3,H,W] float32 in the spec's channel order and normalisation."""
    x = batch_hwc_u8
    if spec["channel_order"] == "BGR":
        x = x[..., ::-1]
    scale = spec["scale"]
    x = x.astype(np.float32) / 255.0 if scale == 1.0 / 255.0 else x.astype(np.float32) * np.float32(scale)
    x = (x - np.array(spec["mean"], np.float32)) / np.array(spec["std"], np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def preprocess_image(img: Image.Image, spec: dict = SPEC) -> np.ndarray:
    """A decoded image -> [1,3,H,W] float32, exactly as the services do."""
    return normalise(resize(to_rgb(img, spec["exif_orientation"]), spec)[None], spec)


def preprocess_file(path, spec: dict = SPEC) -> np.ndarray:
    """Image file -> [1,3,H,W] float32, exactly as the services do."""
    with Image.open(path) as im:
        return preprocess_image(im, spec)
