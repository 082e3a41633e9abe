"""Synthetic 12-lead ECG printouts on grid paper, in the 4 classes of the ECG-image task.

Signals come from a sum-of-Gaussians beat model (the P, Q, R, S and T waves as Gaussian bumps
around each R peak, as in McSharry et al.'s ECGSYN), with per-lead amplitudes close to a normal
12-lead ECG, heart-rate variability, baseline wander and muscle noise. Each class adds the change
that defines it:

  0 normal                      regular sinus rhythm, normal morphology
  1 abnormal_heartbeat          atrial fibrillation (irregular RR, no P waves, fibrillatory
                                baseline) and/or premature ventricular beats (early, wide QRS)
  2 myocardial_infarction       ST elevation in one territory (inferior, anterior or lateral)
                                with reciprocal ST depression and hyperacute T waves
  3 history_of_mi               pathological Q waves and T inversion in one territory,
                                isoelectric ST

The printout is the standard 3x4 layout (2.5 s per lead) plus a 10 s lead-II rhythm strip,
25 mm/s and 10 mm/mV, on pink millimetre paper, with small rotations, blur and lighting changes
as in a photographed or scanned printout. Demo data, not medical data.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ["normal", "abnormal_heartbeat", "myocardial_infarction", "history_of_mi"]
CLASS_NAMES = [
    "Normal",
    "Abnormal heartbeat",
    "Myocardial infarction",
    "History of myocardial infarction",
]
LEADS = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
#            P      Q      R      S      T      (mV)
_NORMAL = {
    "I": (0.10, -0.05, 0.80, -0.10, 0.25),
    "II": (0.15, -0.05, 1.20, -0.20, 0.30),
    "III": (0.05, -0.05, 0.50, -0.20, 0.10),
    "aVR": (-0.10, 0.00, 0.10, -0.80, -0.25),
    "aVL": (0.05, -0.03, 0.45, -0.20, 0.10),
    "aVF": (0.10, -0.05, 0.80, -0.20, 0.20),
    "V1": (0.05, 0.00, 0.20, -1.00, 0.05),
    "V2": (0.05, 0.00, 0.40, -1.20, 0.40),
    "V3": (0.05, 0.00, 0.80, -0.80, 0.45),
    "V4": (0.05, -0.05, 1.30, -0.50, 0.45),
    "V5": (0.05, -0.05, 1.20, -0.30, 0.35),
    "V6": (0.05, -0.05, 0.90, -0.20, 0.30),
}
TERRITORIES = {
    "inferior": (["II", "III", "aVF"], ["I", "aVL"]),
    "anterior": (["V1", "V2", "V3", "V4"], ["II", "III", "aVF"]),
    "lateral": (["I", "aVL", "V5", "V6"], ["II", "III", "aVF"]),
}
FS = 500  # samples per second of the simulated signal


def _g(t, mu, sigma):
    return np.exp(-0.5 * ((t - mu) / sigma) ** 2)


def _beat_times(rng, cls, seconds):
    """R-peak times and a per-beat flag for ventricular ectopy."""
    hr = rng.uniform(55, 95) if cls != 2 else rng.uniform(65, 110)
    rr = 60.0 / hr
    af = pvc = False
    if cls == 1:
        kind = rng.choice(["af", "pvc", "both"], p=[0.4, 0.4, 0.2])
        af, pvc = kind in ("af", "both"), kind in ("pvc", "both")
    times, ectopic = [], []
    t = rng.uniform(0.1, 0.6)
    next_pvc = rng.integers(2, 5)
    while t < seconds + 1:
        is_pvc = pvc and next_pvc == 0
        times.append(t)
        ectopic.append(is_pvc)
        if is_pvc:
            next_pvc = rng.integers(2, 5)
            step = rr * rng.uniform(1.35, 1.6)  # compensatory pause
        else:
            next_pvc -= 1
            step = rr * (rng.uniform(0.6, 1.45) if af else rng.normal(1, 0.02))
            if pvc and next_pvc == 0:
                step = rr * rng.uniform(0.55, 0.7)  # the next beat comes early
        t += step
    return np.array(times), np.array(ectopic), rr, af


def simulate(cls: int, rng: np.random.Generator, seconds: float = 10.0) -> dict[str, np.ndarray]:
    """Returns the 12 leads (mV, FS Hz) of one synthetic recording of class `cls`."""
    return _simulate(cls, rng, seconds)[0]


def _simulate(cls, rng, seconds):
    """The leads, and where the class's sign is: the leads it changes (MI: the territory's
    and its reciprocal leads; history of MI: the territory's) and the ventricular ectopic beats'
    times."""
    t = np.arange(int(seconds * FS)) / FS
    beats, ectopic, rr, af = _beat_times(rng, cls, seconds)
    territory = rng.choice(list(TERRITORIES))
    affected, reciprocal = TERRITORIES[territory]
    st_up = rng.uniform(0.15, 0.45)
    q_depth = rng.uniform(0.25, 0.6)
    wander = rng.uniform(0, 0.15) * np.sin(2 * np.pi * rng.uniform(0.1, 0.4) * t + rng.uniform(0, 6))
    leads = {}
    for name in LEADS:
        p, q, r, s, tw = (a * rng.uniform(0.8, 1.2) for a in _NORMAL[name])
        q_w, st = 0.010, 0.0
        if cls == 2:
            if name in affected:
                st, tw = st_up * rng.uniform(0.8, 1.2), abs(tw) * 1.6 + 0.2
            elif name in reciprocal:
                st = -st_up * rng.uniform(0.4, 0.7)
        if cls == 3 and name in affected:
            q, q_w, r = -q_depth * rng.uniform(0.8, 1.2), 0.022, r * 0.45
            tw = -abs(tw) * rng.uniform(0.6, 1.2) - 0.05
        x = np.zeros_like(t)
        t_off = 0.24 + 0.1 * (rr - 0.8)
        for bt, ect in zip(beats, ectopic):
            d = t - bt
            near = np.abs(d) < 0.7
            dn = d[near]
            if ect:  # wide, bizarre QRS with discordant T and no P
                sign = 1 if _NORMAL[name][2] + _NORMAL[name][3] > 0 else -1
                w = sign * (1.3 * _g(dn, 0.0, 0.035) - 0.5 * _g(dn, 0.07, 0.03)) \
                    - sign * 0.45 * _g(dn, 0.32, 0.07)
            else:
                w = (0 if af else p * _g(dn, -0.17, 0.022)) + q * _g(dn, -0.028, q_w) \
                    + r * _g(dn, 0.0, 0.011) + s * _g(dn, 0.028, 0.011) + tw * _g(dn, t_off, 0.05)
                if st:
                    plateau = 1 / (1 + np.exp(-(dn - 0.045) / 0.006)) * \
                        1 / (1 + np.exp((dn - t_off) / 0.03))
                    w = w + st * plateau
            x[near] += w
        if af:
            x += rng.uniform(0.03, 0.08) * np.sin(2 * np.pi * rng.uniform(5, 7) * t + rng.uniform(0, 6))
        x += wander * rng.uniform(0.5, 1.0) + rng.normal(0, rng.uniform(0.005, 0.02), t.size)
        leads[name] = x
    changed = {2: affected + reciprocal, 3: affected}.get(cls, [])
    return leads, {"leads": list(changed), "ectopic_times": beats[ectopic].tolist()}


def render(cls: int, seed: int, px_per_mm: float = 4.0) -> Image.Image:
    """Returns an RGB printout of a synthetic 12-lead ECG of class `cls`."""
    return _render(cls, seed, px_per_mm, False)[0]


def render_with_signs(cls: int, seed: int, px_per_mm: float = 4.0):
    """The printout `render` gives, and a mask (mode L, 255 = sign) of where its class's sign
    was drawn: the panels of the leads the class changes (MI, history of MI) and a window of
    +-0.3 s around each ventricular ectopic beat in every panel that shows it (abnormal
    heartbeat). Atrial fibrillation alone changes every lead all along: its mask is empty, as is
    a normal ECG's. Rotated as the printout was."""
    return _render(cls, seed, px_per_mm, True)


def _render(cls, seed, px_per_mm, with_signs):
    if cls not in range(4):
        raise ValueError(f"class must be 0..3, got {cls}")
    rng = np.random.default_rng([seed, cls, 0xEC])
    leads, signs = _simulate(cls, rng, 10.0)
    k = px_per_mm
    margin_mm, row_mm, top_mm = 8.0, 25.0, 12.0
    width = int((250 + 2 * margin_mm) * k)
    height = int((top_mm + 4 * row_mm + 6) * k)
    paper = np.array([rng.uniform(245, 255), rng.uniform(225, 242), rng.uniform(225, 242)])
    img = Image.new("RGB", (width, height), tuple(int(v) for v in paper))
    draw = ImageDraw.Draw(img)
    minor = tuple(int(v) for v in paper * np.array([1.0, 0.9, 0.9]))
    major = tuple(int(v) for v in paper * np.array([0.95, 0.7, 0.7]))
    for i in range(int(width / k) + 1):
        draw.line([(i * k, 0), (i * k, height)], fill=major if i % 5 == 0 else minor, width=1)
    for j in range(int(height / k) + 1):
        draw.line([(0, j * k), (width, j * k)], fill=major if j % 5 == 0 else minor, width=1)
    ink = tuple(int(v) for v in rng.uniform(0, 50, 3))
    draw.text((margin_mm * k, 2 * k), "25 mm/s  10 mm/mV  0.05-150 Hz  SYNTHETIC DEMO", fill=ink)
    trace_w = max(2, int(round(0.7 * k)))

    def trace(sig, x0_mm, y_mm, label):
        xs = x0_mm * k + np.arange(sig.size) / FS * 25 * k
        ys = y_mm * k - sig * 10 * k
        draw.line(list(zip(xs.tolist(), ys.tolist())), fill=ink, width=trace_w)
        draw.text((x0_mm * k + 2, (y_mm - 9) * k), label, fill=ink)

    layout = [["I", "aVR", "V1", "V4"], ["II", "aVL", "V2", "V5"], ["III", "aVF", "V3", "V6"]]
    seg = int(2.5 * FS)
    for row, names in enumerate(layout):
        y = top_mm + row_mm * (row + 0.6)
        for col, name in enumerate(names):
            trace(leads[name][col * seg:(col + 1) * seg], margin_mm + 62.5 * col, y, name)
    trace(leads["II"], margin_mm, top_mm + row_mm * 3.6, "II")

    mask = None
    if with_signs:
        mask = Image.new("L", img.size, 0)
        m = ImageDraw.Draw(mask)
        band = lambda row: ((top_mm + row_mm * row) * k, (top_mm + row_mm * (row + 1)) * k)
        for row, names in enumerate(layout):
            for col, name in enumerate(names):
                if name in signs["leads"]:
                    x0 = (margin_mm + 62.5 * col) * k
                    m.rectangle([x0, band(row)[0], x0 + 62.5 * k, band(row)[1]], fill=255)
        if "II" in signs["leads"]:
            m.rectangle([margin_mm * k, band(3)[0], (margin_mm + 250) * k, band(3)[1]], fill=255)
        for bt in signs["ectopic_times"]:
            if not 0 <= bt < 10:
                continue
            col = int(bt // 2.5)
            x = (margin_mm + 62.5 * col + (bt - 2.5 * col) * 25) * k
            m.rectangle([x - 7.5 * k, band(0)[0], x + 7.5 * k, band(2)[1]], fill=255)
            x = (margin_mm + bt * 25) * k
            m.rectangle([x - 7.5 * k, band(3)[0], x + 7.5 * k, band(3)[1]], fill=255)

    angle = rng.uniform(-2, 2)
    img = img.rotate(angle, resample=Image.BILINEAR, fillcolor=tuple(int(v) for v in paper))
    if mask is not None:
        mask = mask.rotate(angle, resample=Image.BILINEAR, fillcolor=0)
    img = img.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.2, 0.8)))
    arr = np.asarray(img).astype(np.float32) * rng.uniform(0.85, 1.05)
    # Uneven lighting as in a photographed printout.
    gx = np.linspace(-1, 1, width)[None, :, None]
    arr *= 1 + rng.uniform(-0.08, 0.08) * gx
    arr += rng.normal(0, rng.uniform(1, 4), arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)), mask
