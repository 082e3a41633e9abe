"""The KServe example (deploy/kserve), with no cluster: an InferenceService of the v1beta1
API whose custom container is the image heart-svc's Dockerfile builds, on the port it exposes,
with medchain's container policy (512 MiB requested and limited, locked down), probes that
never load a model, only heart-svc's own credentials from the documented Secret, and every
setting it sets one heart-svc reads."""
from __future__ import annotations

import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "deploy/kserve/heart-svc.yaml"


def load():
    docs = [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d]
    assert len(docs) == 1
    return docs[0]


def container():
    spec = load()["spec"]["predictor"]
    assert len(spec["containers"]) == 1
    return spec["containers"][0]


def test_it_is_an_inference_service_with_a_custom_container():
    isvc = load()
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert isvc["kind"] == "InferenceService"
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
    # KServe's name for the predictor's serving container.
    assert container()["name"] == "kserve-container"


def test_the_image_and_port_are_heart_svcs():
    c = container()
    assert c["image"].split("/")[-1].split(":")[0] == "heart-svc"
    dockerfile = (ROOT / "heart-svc/Dockerfile").read_text()
    port = c["ports"][0]["containerPort"]
    assert f"EXPOSE {port}" in dockerfile
    assert f"HEART__SERVER__PORT={port}" in dockerfile


def test_memory_is_requested_and_limited_and_the_container_locked_down():
    c = container()
    assert c["resources"]["requests"]["memory"] == c["resources"]["limits"]["memory"] == "512Mi"
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] and not sc["allowPrivilegeEscalation"] and sc["readOnlyRootFilesystem"]
    assert sc["capabilities"]["drop"] == ["ALL"]


def test_probes_never_load_a_model():
    c = container()
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["path"] in {"/healthz", "/readyz"}, probe


def test_only_heart_svcs_own_credentials_and_settings_it_reads():
    defaults = tomllib.loads((ROOT / "heart-svc/config/default.toml").read_text())
    for e in container()["env"]:
        name = e["name"]
        assert name.startswith("HEART__"), name
        # HEART__A__B names the setting a.b of heart-svc's settings tree.
        section, key = name.removeprefix("HEART__").lower().split("__", 1)
        tree = defaults[section]
        for part in key.split("__"):
            tree = tree[part] if isinstance(tree, dict) and part in tree else None
        known = section == "auth" and key.split("__")[0] in {"accept", "send"}
        assert tree is not None or known, f"{name} is not a heart-svc setting"
        if "valueFrom" in e:
            ref = e["valueFrom"]["secretKeyRef"]
            assert ref["name"] == "medchain-credentials" and ref["key"] == name
