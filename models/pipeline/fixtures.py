"""Example inputs and the probabilities the Python side computes for them.

    python -m pipeline.fixtures

Writes models/examples/{retina,ecg}/*.png|jpg and models/examples/fixtures.json. The Rust
services must reproduce every probability within `tolerance`: this is the guard against
preprocessing drift between training and serving (resize filter, RGB order, normalisation,
missing-value encoding). Image probabilities come from PIL decoding + pipeline.preprocess +
ONNX Runtime; tabular ones from ONNX Runtime on the float32 feature vector.
"""

from __future__ import annotations

import json
import math

import numpy as np

from . import common, preprocess, synth_ecg, synth_retina, tabular

EXAMPLES = common.MODELS_DIR / "examples"
FIXTURES = EXAMPLES / "fixtures.json"
TOLERANCE = 1e-3
# JPEG examples: PIL (libjpeg-turbo) and the services (zune-jpeg) round their inverse DCTs
# differently, so decoded pixels differ by a level here and there; PNG inputs are bit-exact and
# keep TOLERANCE. The retina model 3.0.0 moves by up to 2.8e-3 on such a difference. The int8
# variants amplify it further (quantized activations flip at step boundaries): their JPEG
# examples are held to a loose tolerance and the same top class; their PNG examples to TOLERANCE.
JPEG_TOLERANCE = 5e-3
INT8_JPEG_TOLERANCE = 0.1
EXAMPLE_SEED = 987_000_000  # disjoint from every training and held-out seed


def _session(path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def tabular_rows(name: str, sess) -> list[dict]:
    """A handful of real rows (first rows, rows with nullable fields missing) and their output."""
    cfg = tabular.DATASETS[name]
    x, y, _ = tabular.load(name)
    feats = cfg["features"]
    required = [i for i, f in enumerate(feats) if not f["nullable"]]
    complete = [r for r in range(len(x)) if not np.isnan(x[r, required]).any()]
    with_nulls = [r for r in complete if np.isnan(x[r]).any()]
    rows = complete[:4] + with_nulls[:2] + [complete[-1]]
    out = []
    probs = sess.run(["probabilities"], {"features": x[rows]})[0]
    for r, p in zip(rows, probs):
        inp = {}
        for i, f in enumerate(feats):
            v = float(str(x[r, i]))  # shortest decimal that round-trips the float32
            if math.isnan(v):
                inp[f["name"]] = None
            elif f["integer"]:
                inp[f["name"]] = int(round(v))
            else:
                inp[f["name"]] = v
        out.append({"disease": name, "model": "tabular", "source_row": int(r),
                    "true_label": int(y[r]), "input": inp,
                    "probabilities": [float(v) for v in p]})
    return out


def image_examples(task: str, sess, per_class: int = 2) -> list[dict]:
    render = synth_retina.render if task == "retina" else synth_ecg.render
    labels = synth_retina.GRADES if task == "retina" else synth_ecg.CLASSES
    disease = "diabetes" if task == "retina" else "heart"
    folder = EXAMPLES / task
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for c, label in enumerate(labels):
        for k in range(per_class):
            img = render(c, EXAMPLE_SEED + 10 * c + k)
            # Retina: one PNG and one JPEG per class; ECG printouts as JPEG (PNG is large).
            if task == "retina" and k == 0:
                name = f"{c}-{label}-{k}.png"
                img.save(folder / name, optimize=True)
            else:
                name = f"{c}-{label}-{k}.jpg"
                img.save(folder / name, quality=90, subsampling=0)
            x = preprocess.preprocess_file(folder / name)
            p = common.softmax(sess.run(["logits"], {"image": x})[0])[0]
            out.append({"disease": disease, "model": task, "file": f"{task}/{name}",
                        "true_class": c, "probabilities": [float(v) for v in p]})
    return out


def edge_examples() -> list[str]:
    """Inputs the services must handle although no model was trained on them: the same retina
    photo saved as a CMYK JPEG (print workflows produce these), and an ECG stored sideways with
    an EXIF orientation. Tests compare their predictions with the originals' (colour conversion
    and re-encoding differ slightly, so not at fixture tolerance)."""
    from PIL import Image

    folder = EXAMPLES / "edge"
    folder.mkdir(parents=True, exist_ok=True)
    src = EXAMPLES / "retina" / f"0-{synth_retina.GRADES[0]}-1.jpg"
    if not src.exists():
        return []
    dst = folder / "retina-cmyk.jpg"
    Image.open(src).convert("CMYK").save(dst, quality=92)
    out = [dst]
    # A phone photo of an ECG printout, stored sideways with an EXIF orientation (6: rotate
    # 90° clockwise to display) — and the same pixels without it, as the test's control: the
    # ECG model was trained upright, so ignoring EXIF changes its answer.
    ecg = EXAMPLES / "ecg" / f"2-{synth_ecg.CLASSES[2]}-0.jpg"
    if ecg.exists():
        sideways = Image.open(ecg).convert("RGB").transpose(Image.ROTATE_90)
        exif = Image.Exif()
        exif[0x0112] = 6
        sideways.save(folder / "ecg-exif-rotated.jpg", quality=92, exif=exif.tobytes())
        sideways.save(folder / "ecg-rotated-no-exif.jpg", quality=92)
        out += [folder / "ecg-exif-rotated.jpg", folder / "ecg-rotated-no-exif.jpg"]
    return [str(p.relative_to(EXAMPLES)) for p in out]


def build(only_tabular: bool = False) -> dict:
    data = {"tolerance": TOLERANCE, "jpeg_tolerance": JPEG_TOLERANCE,
            "int8_jpeg_tolerance": INT8_JPEG_TOLERANCE, "tabular": [], "image": []}
    for name in tabular.DATASETS:
        card = json.loads((common.MODELS_DIR / name / "tabular.card.json").read_text())
        sess = _session(common.MODELS_DIR / name / "tabular.onnx")
        rows = tabular_rows(name, sess)
        for r in rows:
            r["model_sha256"] = card["sha256"]
        data["tabular"] += rows
    if not only_tabular:
        for task, disease in (("retina", "diabetes"), ("ecg", "heart")):
            path = common.MODELS_DIR / disease / f"{task}.onnx"
            if not path.exists():
                print(f"skipping {task}: {path} not built yet")
                continue
            card = json.loads(path.with_suffix(".card.json").read_text())
            items = image_examples(task, _session(path))
            for it in items:
                it["model_sha256"] = card["sha256"]
            data["image"] += items
            # The int8 variant (pipeline.quantize), on the same example files.
            int8 = path.with_name(f"{task}.int8.onnx")
            if int8.exists():
                card8 = json.loads(int8.with_suffix(".card.json").read_text())
                sess8 = _session(int8)
                for it in items:
                    x = preprocess.preprocess_file(EXAMPLES / it["file"])
                    p = common.softmax(sess8.run(["logits"], {"image": x})[0])[0]
                    data["image"].append({**it, "variant": "int8",
                                          "probabilities": [float(v) for v in p],
                                          "model_sha256": card8["sha256"]})
    EXAMPLES.mkdir(exist_ok=True)
    if not only_tabular:
        edge_examples()
    FIXTURES.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {FIXTURES}: {len(data['tabular'])} tabular rows, {len(data['image'])} images")
    return data


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only-tabular", action="store_true")
    build(ap.parse_args().only_tabular)
