"""Helpers every pipeline step shares: paths, hashing, model cards and load-RSS measurement."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np

MODELS_DIR = Path(__file__).resolve().parent.parent
CARD_SCHEMA_VERSION = 1
DEMO_NOTICE = ("Demo model trained on synthetic images, not for clinical use. "
               "Its outputs say nothing about a real patient.")
TABULAR_NOTICE = ("Research model trained on a small public data set; not a medical device and "
                  "not for clinical decisions.")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def versions() -> dict:
    import onnx
    import onnxruntime

    out = {"python": platform.python_version(), "onnx": onnx.__version__,
           "onnxruntime": onnxruntime.__version__, "numpy": np.__version__}
    for mod in ("torch", "torchvision", "xgboost", "onnxmltools", "sklearn"):
        if mod in sys.modules:
            out[mod] = sys.modules[mod].__version__
    return out


_RSS_PROBE = r"""
import json, sys
import numpy as np
import onnxruntime as ort

def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024

path, shape, dtype = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
opts = ort.SessionOptions()
opts.intra_op_num_threads = 1
before = rss()
s = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
after_load = rss()
x = np.zeros([1 if d in (-1, None) else d for d in shape], dtype=dtype)
s.run(None, {s.get_inputs()[0].name: x})
after_run = rss()
print(json.dumps({"before": before, "after_load": after_load, "after_first_run": after_run}))
"""


def measure_load_rss(onnx_path: Path, shape, dtype: str) -> dict:
    """RSS that creating an ORT session and running one input adds, in a fresh process.

    The baseline is taken after `import onnxruntime`, so the figure is the model's own cost (the
    ONNX Runtime library and environment are paid once per process, whatever the model)."""
    res = subprocess.run([sys.executable, "-c", _RSS_PROBE, str(onnx_path), json.dumps(shape), dtype],
                         check=True, capture_output=True, text=True)
    r = json.loads(res.stdout)
    added = r["after_first_run"] - r["before"]
    return {
        "rss_added_bytes": added,
        "rss_added_mb": round(added / 2**20, 1),
        "rss_added_by_session_creation_mb": round((r["after_load"] - r["before"]) / 2**20, 1),
        "measured_with": "onnxruntime (Python) in a fresh process, CPU provider, 1 intra-op "
                         "thread: RSS after session creation and one batch-1 run minus RSS after "
                         "`import onnxruntime`",
    }


def base_card(*, model_id: str, onnx_path: Path, disease: str, modality: str, demo: bool,
              notice: str, framework: dict, input_spec: dict, outputs: list, classes: list,
              version: str = "1.0.0") -> dict:
    import onnx

    m = onnx.load(str(onnx_path), load_external_data=False)
    return {
        "schema_version": CARD_SCHEMA_VERSION,
        "model_id": model_id,
        "version": version,
        "disease": disease,
        "modality": modality,
        "file": onnx_path.name,
        "sha256": sha256_file(onnx_path),
        "size_bytes": onnx_path.stat().st_size,
        "framework": {**framework, "onnx_opsets": {(o.domain or "ai.onnx"): o.version
                                                    for o in m.opset_import}},
        "demo": demo,
        "notice": notice,
        "input": input_spec,
        "outputs": outputs,
        "classes": classes,
    }


def image_card(*, model_id, onnx_path, arch, labels, names, risk_band_by_class, metrics, training,
               disease=None, demo=True, notice=DEMO_NOTICE, framework=None, version="1.0.0",
               preprocessing=None):
    from . import preprocess

    preprocessing = preprocessing or preprocess.SPEC
    width, height = preprocess.input_size(preprocessing)
    disease = disease or ("diabetes" if onnx_path.parent.name == "diabetes" else "heart")
    input_spec = {"name": "image", "shape": [-1, 3, height, width], "dtype": "float32"}
    card = base_card(
        model_id=model_id, onnx_path=onnx_path, disease=disease, modality="image", demo=demo,
        notice=notice, version=version,
        framework=framework or {"name": "pytorch", "architecture": f"torchvision.models.{arch}",
                                "versions": versions()},
        input_spec=input_spec,
        outputs=[{"name": "logits", "shape": [-1, len(labels)], "dtype": "float32",
                  "kind": "logits (apply softmax for probabilities)"}],
        classes=[{"index": i, "label": l, "name": n, "risk_band": b}
                 for i, (l, n, b) in enumerate(zip(labels, names, risk_band_by_class))],
    )
    card["preprocessing"] = preprocessing
    card["training"] = training
    card["metrics"] = metrics
    card["load_cost"] = measure_load_rss(onnx_path, input_spec["shape"], "float32")
    return card


def write_card(onnx_path: Path, card: dict, quiet: bool = False) -> Path:
    """Writes `<model>.card.json` next to the ONNX file, checking the hash one last time."""
    assert card["sha256"] == sha256_file(onnx_path), "card hash does not match the ONNX file"
    dest = onnx_path.with_suffix(".card.json")
    dest.write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n")
    if not quiet:
        print(f"wrote {dest}")
    return dest
