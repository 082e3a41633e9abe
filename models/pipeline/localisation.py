"""Where the image models' class activation maps peak, against where the synthetic generators
drew each class's sign: a measure of whether a map points at the evidence.

    python -m pipeline.localisation            # measure every image model, write the cards
    python -m pipeline.localisation --check    # measure, compare with the cards, write nothing

For held-out images (the `test` plan's seeds, never trained on) of every class that has a
localised sign -- retina grades 1-4 (lesions), ECG classes 1-3 (the leads an infarct or an old
infarct changes, the ectopic beats; atrial fibrillation alone, which changes every lead, is left
out) -- the generator gives the image and a mask of its sign. The map of the image's own class is
taken from the model's `cam` output; it *hits* when the grid cell where it peaks (a 32 x 32 pixel
square of the 224 x 224 input for a 7 x 7 grid) holds any of the sign. `chance` is the share a
peak placed in a random cell would hit (the mean share of cells holding the sign): the figure
means something only as far as it is above that.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
from PIL import Image

from . import common, images, preprocess, synth_ecg, synth_retina

PER_CLASS = 40
# Runs on other CPUs may break a near-tie between two cells the other way.
TOLERANCE = 0.03

MODELS = {
    "retina": {
        "cards": ["diabetes/retina.card.json", "diabetes/retina.int8.card.json"],
        "classes": [1, 2, 3, 4],
        "render": synth_retina.render_with_lesions,
        "sign": "lesions drawn by synth_retina.render_with_lesions",
    },
    "ecg": {
        "cards": ["heart/ecg.card.json", "heart/ecg.int8.card.json"],
        "classes": [1, 2, 3],
        "render": synth_ecg.render_with_signs,
        "sign": "lead panels and ectopic-beat windows marked by synth_ecg.render_with_signs",
    },
}


def _session(path):
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])


def samples(task: str, per_class: int = PER_CLASS):
    """(label, x [1,3,224,224] float32, sign cells [h*w] bool over a 7 x 7 grid) for the first
    `per_class` held-out images of each class with a localised sign."""
    m = MODELS[task]
    taken = {c: 0 for c in m["classes"]}
    for label, seed, jpeg in images.sample_plan(task, "test"):
        if label not in taken or taken[label] >= per_class:
            continue
        img, mask = m["render"](label, seed)
        if not np.asarray(mask).any():
            continue  # atrial fibrillation alone: no one place holds the sign
        taken[label] += 1
        x = preprocess.normalise(images.finish(img, label, seed, jpeg)[None])
        sign = np.asarray(mask.resize((preprocess.SIZE,) * 2, Image.BILINEAR)) > 0
        yield label, x, sign
        if all(n >= per_class for n in taken.values()):
            return


def cells(sign: np.ndarray, grid) -> np.ndarray:
    """Which cells of an h x w grid over the mask hold any of the sign."""
    h, w = grid
    H, W = sign.shape
    if H % h or W % w:
        raise ValueError(f"a {H}x{W} mask does not split into a {h}x{w} grid")
    return sign.reshape(h, H // h, w, W // w).any(axis=(1, 3))


def measure(task: str, per_class: int = PER_CLASS) -> dict[str, dict]:
    """Each of the task's cards (by path) -> its localisation figure."""
    m = MODELS[task]
    cards = {p: json.loads((common.MODELS_DIR / p).read_text()) for p in m["cards"]}
    runs = {}
    for p, card in cards.items():
        spec = card["explanation"]
        runs[p] = (_session(common.MODELS_DIR / p.replace(".card.json", ".onnx")), spec)
    tallies = {p: {"hits": 0, "chance": 0.0, "n": 0, "correct": 0,
                   "by_class": {c: [0, 0, 0.0] for c in m["classes"]}} for p in cards}
    for label, x, sign in samples(task, per_class):
        for p, (sess, spec) in runs.items():
            logits, cam = sess.run(["logits", spec["output"]], {"image": x})
            grid = tuple(spec["grid"])
            held = cells(sign, grid)
            peak = np.unravel_index(int(np.argmax(cam[0, label])), grid)
            t = tallies[p]
            hit = bool(held[peak])
            t["hits"] += hit
            t["chance"] += float(held.mean())
            t["n"] += 1
            t["correct"] += int(np.argmax(logits[0]) == label)
            t["by_class"][label][0] += hit
            t["by_class"][label][1] += 1
            t["by_class"][label][2] += float(held.mean())
    labels = cards[m["cards"][0]]["classes"]
    out = {}
    for p, t in tallies.items():
        out[p] = {
            "images": t["n"],
            "peak_in_sign": round(t["hits"] / t["n"], 4),
            "chance": round(t["chance"] / t["n"], 4),
            "by_class": {labels[c]["label"]: {"peak_in_sign": round(h / n, 4),
                                              "chance": round(ch / n, 4), "images": n}
                         for c, (h, n, ch) in t["by_class"].items()},
            "predicted_correctly": round(t["correct"] / t["n"], 4),
            "map": "the image's own class",
            "criterion": f"the map's peak cell (of a {'x'.join(map(str, runs[p][1]['grid']))} grid "
                         f"over the 224 x 224 input) holds any of the sign",
            "sign": m["sign"],
            "data": f"held-out plan (images.sample_plan '{task}' 'test'), the first {per_class} "
                    f"images of each class in {m['classes']} with a localised sign",
        }
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--check", action="store_true", help="compare with the cards, write nothing")
    ap.add_argument("--task", choices=list(MODELS), action="append")
    args = ap.parse_args(argv)
    bad = 0
    for task in args.task or list(MODELS):
        for p, fig in measure(task).items():
            print(f"{p}: peak in sign {fig['peak_in_sign']:.3f} (chance {fig['chance']:.3f}, "
                  f"{fig['images']} images); by class: " + ", ".join(
                      f"{k} {v['peak_in_sign']:.3f} (chance {v['chance']:.3f})"
                      for k, v in fig["by_class"].items()))
            path = common.MODELS_DIR / p
            card = json.loads(path.read_text())
            if args.check:
                was = card["explanation"].get("localisation", {}).get("peak_in_sign")
                if was is None or abs(was - fig["peak_in_sign"]) > TOLERANCE:
                    print(f"  the card says {was}", file=sys.stderr)
                    bad += 1
                continue
            card["explanation"]["localisation"] = fig
            path.write_text(json.dumps(card, indent=2) + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
