"""Synthetic colour fundus photographs whose lesions follow the 5 diabetic-retinopathy grades.

These are *demo* images: they look like a fundus photo (dark surround, orange-red disc with
vignetting, optic disc, vessel tree, macula) and carry the lesions that define each grade of the
International Clinical Diabetic Retinopathy scale. They are not medical images.

Grades (what the generator draws):
  0 no DR          -- no lesions
  1 mild NPDR      -- a few microaneurysms (small, sharp, very dark red dots)
  2 moderate NPDR  -- more microaneurysms, dot/blot haemorrhages, some hard exudates
  3 severe NPDR    -- many haemorrhages in all four quadrants, venous beading, cotton-wool spots
  4 proliferative  -- new vessels (bright red tangled loops) at the disc or elsewhere, plus severe signs,
                      sometimes a pre-retinal (boat-shaped) haemorrhage

Every image is a pure function of (grade, seed) so data sets are reproducible.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

GRADES = ["no_dr", "mild_npdr", "moderate_npdr", "severe_npdr", "proliferative_dr"]
GRADE_NAMES = [
    "No diabetic retinopathy",
    "Mild non-proliferative DR",
    "Moderate non-proliferative DR",
    "Severe non-proliferative DR",
    "Proliferative DR",
]


def _vessel_tree(draw: ImageDraw.ImageDraw, rng: np.random.Generator, disc, radius, size,
                 colour, beading: bool, lesions=None):
    """Draws four arcades and their branches leaving the optic disc."""
    cx, cy = disc
    for base_angle in (-0.35, 0.35, np.pi - 0.35, np.pi + 0.35):
        for _ in range(2):
            _branch(draw, rng, (cx, cy), base_angle + rng.normal(0, 0.25),
                    width=size * rng.uniform(0.010, 0.016), length=radius * rng.uniform(0.9, 1.4),
                    colour=colour, depth=0, beading=beading, size=size, lesions=lesions)


def _branch(draw, rng, start, angle, width, length, colour, depth, beading, size, lesions=None):
    x, y = start
    steps = 14
    step = length / steps
    pts = [(x, y)]
    for i in range(steps):
        angle += rng.normal(0, 0.12)
        x += np.cos(angle) * step
        y += np.sin(angle) * step
        pts.append((x, y))
        if depth < 2 and i in (5, 10) and rng.random() < 0.8:
            _branch(draw, rng, (x, y), angle + rng.choice([-1, 1]) * rng.uniform(0.4, 0.9),
                    width * 0.65, length * 0.5, colour, depth + 1, beading, size, lesions)
    w = max(1, int(round(width)))
    draw.line(pts, fill=colour, width=w, joint="curve")
    if beading and depth == 0:
        for px, py in pts[3::2]:
            r = width * rng.uniform(0.8, 1.3)
            draw.ellipse([px - r, py - r, px + r, py + r], fill=colour)
            if lesions is not None:
                lesions.ellipse([px - r, py - r, px + r, py + r], fill=255)


def _dots(draw, rng, n, centre, radius, rmin, rmax, colour_fn, quadrants=None, lesions=None):
    """Places n round spots inside the fundus disc (optionally spread over all four quadrants);
    marks them on `lesions` (a mask's ImageDraw) when given."""
    cx, cy = centre
    for i in range(n):
        if quadrants:
            q = i % 4
            ang = rng.uniform(q * np.pi / 2, (q + 1) * np.pi / 2)
        else:
            ang = rng.uniform(0, 2 * np.pi)
        d = radius * np.sqrt(rng.uniform(0.02, 0.8))
        x, y = cx + d * np.cos(ang), cy + d * np.sin(ang)
        r = rng.uniform(rmin, rmax)
        rx, ry = r * rng.uniform(0.8, 1.25), r * rng.uniform(0.8, 1.25)
        draw.ellipse([x - rx, y - ry, x + rx, y + ry], fill=colour_fn())
        if lesions is not None:
            lesions.ellipse([x - rx, y - ry, x + rx, y + ry], fill=255)


def render(grade: int, seed: int, size: int = 256) -> Image.Image:
    """Returns an RGB fundus-like image of the given grade."""
    return _render(grade, seed, size, False)[0]


def render_with_lesions(grade: int, seed: int, size: int = 256) -> tuple[Image.Image, Image.Image]:
    """The image `render` gives, and a mask (mode L, 255 = lesion) of where its lesions were
    drawn -- microaneurysms, haemorrhages, exudates, cotton-wool spots, venous beading, new
    vessels, fibrous tissue, preretinal haemorrhage -- moved as the image was (flip, rotation)."""
    return _render(grade, seed, size, True)


def _render(grade: int, seed: int, size: int, with_lesions: bool):
    if grade not in range(5):
        raise ValueError(f"grade must be 0..4, got {grade}")
    rng = np.random.default_rng([seed, grade, 0xF0])
    s = size
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    cx, cy = s / 2 + rng.normal(0, s * 0.01), s / 2 + rng.normal(0, s * 0.01)
    radius = s * rng.uniform(0.44, 0.49)
    rr = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) / radius

    # Background: orange-red retina with vignetting and choroidal texture.
    base = np.array([rng.uniform(170, 225), rng.uniform(70, 110), rng.uniform(25, 55)], np.float32)
    vignette = np.clip(1.0 - 0.45 * rr ** 2.2, 0, 1)[..., None]
    tex = rng.normal(0, 1, (s // 8 + 1, s // 8 + 1)).astype(np.float32)
    tex = np.array(Image.fromarray(tex).resize((s, s), Image.BICUBIC))[..., None]
    img = base * vignette * (1 + 0.04 * tex)

    # Macula: darker patch temporal to the disc; optic disc: bright yellow-white circle.
    side = rng.choice([-1, 1])
    disc = (cx + side * radius * rng.uniform(0.35, 0.5), cy + rng.normal(0, radius * 0.05))
    mac = (cx - side * radius * 0.05, cy)
    dm = np.sqrt((xx - mac[0]) ** 2 + (yy - mac[1]) ** 2) / (radius * 0.18)
    img *= (1 - 0.3 * np.exp(-dm ** 2))[..., None]
    dd = np.sqrt((xx - disc[0]) ** 2 + (yy - disc[1]) ** 2) / (radius * rng.uniform(0.13, 0.17))
    disc_col = np.array([250, 225, 150], np.float32)
    a = np.clip(1.3 - dd, 0, 1)[..., None]
    img = img * (1 - a) + disc_col * a

    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    lesion_mask = Image.new("L", pil.size, 0) if with_lesions else None
    les = ImageDraw.Draw(lesion_mask) if lesion_mask is not None else None
    vessel = tuple(int(v) for v in base * np.array([0.6, 0.35, 0.4]))
    _vessel_tree(draw, rng, disc, radius, s, vessel, beading=grade >= 3 and rng.random() < 0.7,
                 lesions=les)

    dark_red = lambda: (int(rng.uniform(90, 140)), int(rng.uniform(10, 30)), int(rng.uniform(10, 30)))
    exudate = lambda: (int(rng.uniform(235, 255)), int(rng.uniform(215, 240)), int(rng.uniform(90, 150)))
    cotton = lambda: (int(rng.uniform(225, 245)), int(rng.uniform(200, 225)), int(rng.uniform(190, 215)))
    k = s / 256  # lesion sizes scale with the image

    # Microaneurysms are the only sign of grade 1, so they must survive the resize to 224 px,
    # the blur and JPEG: darker than haemorrhages and at least ~2 px across after resizing.
    ma_red = lambda: (int(rng.uniform(55, 95)), int(rng.uniform(5, 20)), int(rng.uniform(5, 20)))
    if grade >= 1:
        n_ma = {1: rng.integers(5, 11), 2: rng.integers(10, 18)}.get(grade, rng.integers(12, 22))
        _dots(draw, rng, int(n_ma), (cx, cy), radius, 2.2 * k, 3.2 * k, ma_red, lesions=les)
    if grade >= 2:
        n_h = {2: rng.integers(3, 7)}.get(grade, rng.integers(16, 30))
        _dots(draw, rng, int(n_h), (cx, cy), radius, 3.5 * k, 6.5 * k, dark_red,
              quadrants=grade >= 3, lesions=les)
        n_ex = {2: rng.integers(3, 10)}.get(grade, rng.integers(6, 16))
        _dots(draw, rng, int(n_ex), mac, radius * 0.5, 1.5 * k, 3.5 * k, exudate, lesions=les)
    if grade >= 3:
        _dots(draw, rng, int(rng.integers(2, 6)), (cx, cy), radius * 0.8, 5 * k, 9 * k, cotton,
              lesions=les)
    if grade == 4:
        # Proliferative signs. 2.0.0 drew the new vessels in a colour close to the background
        # and in a ~10 px knot, which the 224 px model could not tell from grade 3 (held-out
        # grade 3/4 confusion 71/27 and 64/35). Now: a wider tangle of fine loops at the disc
        # or on an arcade, in the saturated magenta-red of new vessels (low green, unlike the
        # orange background and the dark haemorrhages), often veiled by grey-white fibrous
        # tissue, and usually a boat-shaped preretinal haemorrhage below it.
        at = disc if rng.random() < 0.6 else (cx + rng.normal(0, radius * 0.3),
                                              cy + rng.normal(0, radius * 0.3))
        if rng.random() < 0.5:
            fw = radius * rng.uniform(0.08, 0.14)
            fib = Image.new("RGB", pil.size, (228, 222, 210))
            m = Image.new("L", pil.size, 0)
            ImageDraw.Draw(m).ellipse([at[0] - fw, at[1] - fw * 0.7, at[0] + fw, at[1] + fw * 0.7],
                                      fill=int(rng.uniform(90, 140)))
            if les is not None:
                les.ellipse([at[0] - fw, at[1] - fw * 0.7, at[0] + fw, at[1] + fw * 0.7], fill=255)
            pil = Image.composite(fib, pil, m.filter(ImageFilter.GaussianBlur(3 * k)))
            draw = ImageDraw.Draw(pil)
        nv = (int(rng.uniform(195, 235)), int(rng.uniform(20, 45)), int(rng.uniform(45, 80)))
        for _ in range(int(rng.integers(22, 34))):
            pts = [(at[0] + rng.normal(0, 9 * k), at[1] + rng.normal(0, 9 * k))]
            ang = rng.uniform(0, 2 * np.pi)
            for _ in range(10):
                ang += rng.normal(0, 0.9)
                pts.append((pts[-1][0] + 4 * k * np.cos(ang), pts[-1][1] + 4 * k * np.sin(ang)))
            draw.line(pts, fill=nv, width=max(2, int(round(2.5 * k))))
            if les is not None:
                les.line(pts, fill=255, width=max(2, int(round(2.5 * k))))
        if rng.random() < 0.75:
            px, py = at[0] + rng.normal(0, radius * 0.1), at[1] + radius * rng.uniform(0.15, 0.35)
            w, h = radius * rng.uniform(0.14, 0.24), radius * rng.uniform(0.07, 0.12)
            draw.chord([px - w, py - h, px + w, py + h], 0, 180, fill=dark_red())
            if les is not None:
                les.chord([px - w, py - h, px + w, py + h], 0, 180, fill=255)

    pil = pil.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.3, 0.7) * k))
    arr = np.asarray(pil).astype(np.float32)
    arr *= rng.uniform(0.8, 1.15)
    arr += rng.normal(0, rng.uniform(1, 4), arr.shape)
    mask = (rr <= 1.0)[..., None]
    arr = np.where(mask, arr, rng.uniform(0, 8))
    out = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if lesion_mask is not None:  # what was drawn outside the fundus is not in the image
        lesion_mask = Image.fromarray(np.where(rr <= 1.0, np.asarray(lesion_mask), 0).astype(np.uint8))
    flip = rng.random() < 0.5
    angle = rng.uniform(-15, 15)
    for_both = [out] if lesion_mask is None else [out, lesion_mask]
    if flip:
        for_both = [im.transpose(Image.FLIP_LEFT_RIGHT) for im in for_both]
    for_both = [im.rotate(angle, resample=Image.BILINEAR) for im in for_both]
    return for_both[0], (for_both[1] if lesion_mask is not None else None)


def jpeg_roundtrip(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Re-encodes as JPEG at a random quality: users upload JPEGs, so training sees their artefacts."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(rng.integers(70, 96)))
    buf.seek(0)
    return Image.open(buf).convert("RGB")
