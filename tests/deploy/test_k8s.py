"""The Kubernetes package (deploy/k8s), with no cluster: every overlay renders with
`kubectl kustomize`, every rendered object validates against the Kubernetes schemas of a current
release (kubernetes-validate, strict: no unknown fields), and the rendered YAML keeps medchain's
policies — 512 MiB requested and limited on every container, probes that never load a model, the
HPA on heart-svc alone, no committed Secret values, NetworkPolicies over every workload, chain-svc
a single Recreate replica on a volume, locked-down containers."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy/k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
# The newest Kubernetes release whose schemas kubernetes-validate ships.
K8S_VERSION = kubernetes_validate.latest_version()
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet"}
# Secrets the manifests name; each is made with `kubectl create secret` (docs/kubernetes.md).
DOCUMENTED_SECRETS = {"medchain-credentials", "medchain-callers", "medchain-chain-keys", "medchain-tls"}
# Routes a probe may ask: none loads a model (/readyz of a disease service checks files only).
PROBE_PATHS = {"/healthz", "/readyz"}


def render(overlay: str) -> list[dict]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed to render the overlays (scripts/setup.sh installs it)"
    out = subprocess.run([kubectl, "kustomize", str(K8S / "overlays" / overlay)],
                         check=True, capture_output=True, text=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request) -> tuple[str, list[dict]]:
    return request.param, render(request.param)


def of_kind(objs, kind):
    return [o for o in objs if o["kind"] == kind]


def named(objs, kind, name):
    found = [o for o in of_kind(objs, kind) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)}"
    return found[0]


def pod_specs(objs):
    for o in objs:
        if o["kind"] in WORKLOADS:
            yield o, o["spec"]["template"]["spec"]


def test_there_are_dev_and_prod_overlays():
    assert OVERLAYS == ["dev", "prod"]


def test_every_object_validates_against_the_kubernetes_schemas(rendered):
    overlay, objs = rendered
    assert objs
    for o in objs:
        try:
            kubernetes_validate.validate(o, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{overlay}: {o['kind']}/{o['metadata']['name']}: {e.message} "
                        f"at {'/'.join(map(str, e.path))} (Kubernetes {K8S_VERSION})")


def test_every_container_requests_and_is_limited_to_512_mib(rendered):
    overlay, objs = rendered
    for o, spec in pod_specs(objs):
        for c in spec.get("initContainers", []) + spec["containers"]:
            res = c.get("resources", {})
            where = f"{overlay}: {o['metadata']['name']}/{c['name']}"
            assert res.get("limits", {}).get("memory") == "512Mi", where
            assert res.get("requests", {}).get("memory") == "512Mi", where
            assert res.get("requests", {}).get("cpu"), f"{where}: no CPU request"


def test_containers_are_locked_down(rendered):
    overlay, objs = rendered
    for o, spec in pod_specs(objs):
        name = o["metadata"]["name"]
        pod = spec.get("securityContext", {})
        assert pod.get("runAsNonRoot") is True and pod.get("runAsUser") == 10001, name
        assert spec.get("automountServiceAccountToken") is False, name
        assert spec.get("enableServiceLinks") is False, name
        mounts_ok = {v["name"] for v in spec.get("volumes", [])}
        for c in spec["containers"]:
            sc = c.get("securityContext", {})
            assert sc.get("readOnlyRootFilesystem") is True, f"{overlay}: {name}"
            assert sc.get("allowPrivilegeEscalation") is False, f"{overlay}: {name}"
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{overlay}: {name}"
            mounted = {m["mountPath"] for m in c.get("volumeMounts", [])}
            # A read-only root needs somewhere to write temporary files.
            assert "/tmp" in mounted, f"{overlay}: {name} has no writable /tmp"
            for m in c.get("volumeMounts", []):
                assert m["name"] in mounts_ok, f"{name}: mount of unknown volume {m['name']}"


def test_probes_never_load_a_model(rendered):
    overlay, objs = rendered
    for o, spec in pod_specs(objs):
        for c in spec["containers"]:
            probes = {k: c.get(k) for k in ("livenessProbe", "readinessProbe", "startupProbe")}
            assert probes["livenessProbe"] and probes["readinessProbe"], o["metadata"]["name"]
            for kind, p in probes.items():
                if not p:
                    continue
                if "httpGet" in p:
                    path = p["httpGet"]["path"]
                    assert path in PROBE_PATHS, f"{overlay}: {o['metadata']['name']} {kind} {path}"
                    assert "predict" not in path and "warm" not in path
                else:
                    assert "tcpSocket" in p, f"{o['metadata']['name']} {kind}: {p}"


def test_the_hpa_scales_heart_svc_alone_on_cpu(rendered):
    overlay, objs = rendered
    hpas = of_kind(objs, "HorizontalPodAutoscaler")
    assert [h["spec"]["scaleTargetRef"]["name"] for h in hpas] == ["heart-svc"], overlay
    h = hpas[0]
    assert h["spec"]["scaleTargetRef"]["kind"] == "Deployment"
    assert [m["resource"]["name"] for m in h["spec"]["metrics"]] == ["cpu"], \
        "memory never scales down (ONNX Runtime's arena keeps what it took)"
    # The HPA owns heart-svc's replica count: a fixed one would be reset at every apply.
    assert "replicas" not in named(objs, "Deployment", "heart-svc")["spec"]


def test_no_secret_holds_a_committed_value(rendered):
    overlay, objs = rendered
    assert not of_kind(objs, "Secret"), f"{overlay}: a Secret is rendered from the repository"
    referenced = set()
    for o, spec in pod_specs(objs):
        for c in spec["containers"]:
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    referenced.add(ref["name"])
                    assert e["name"] == ref["key"], e
                # Nothing that looks like a credential or key is given as a literal.
                if "value" in e:
                    assert not any(w in e["name"] for w in ("AUTH__", "SECRETS__", "KEYS")), e
            for ef in c.get("envFrom", []):
                assert "secretRef" not in ef, f"{o['metadata']['name']}: a whole Secret as env"
    for ing in of_kind(objs, "Ingress"):
        for t in ing["spec"].get("tls", []):
            referenced.add(t["secretName"])
    assert referenced <= DOCUMENTED_SECRETS, referenced - DOCUMENTED_SECRETS
    docs = (ROOT / "docs/kubernetes.md").read_text()
    for s in referenced:
        assert f"create secret" in docs and s in docs, f"docs/kubernetes.md does not say how to make {s}"


def test_each_service_gets_only_its_own_credentials(rendered):
    overlay, objs = rendered
    prefix = {"gateway": "GATEWAY__", "diabetes-svc": "DIABETES__", "heart-svc": "HEART__",
              "chain-svc": "CHAIN__"}
    for o, spec in pod_specs(objs):
        name = o["metadata"]["name"]
        for c in spec["containers"]:
            for e in c.get("env", []):
                if e.get("valueFrom", {}).get("secretKeyRef", {}).get("name") == "medchain-credentials":
                    assert e["name"].startswith(prefix[name]), f"{overlay}: {name} holds {e['name']}"


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def test_network_policies_cover_every_workload(rendered):
    overlay, objs = rendered
    policies = of_kind(objs, "NetworkPolicy")
    deny = [p for p in policies if p["spec"]["podSelector"] == {} and "ingress" not in p["spec"]
            and p["spec"]["policyTypes"] == ["Ingress"]]
    assert deny, f"{overlay}: no default-deny ingress policy"
    services = {s["metadata"]["name"]: s for s in of_kind(objs, "Service")}
    for o, spec in pod_specs(objs):
        name = o["metadata"]["name"]
        labels = o["spec"]["template"]["metadata"]["labels"]
        opening = [p for p in policies if p["spec"]["podSelector"] and selects(p["spec"]["podSelector"], labels)]
        assert opening, f"{overlay}: no policy lets anything reach {name}"
        ports = {c["containerPort"] for c in spec["containers"][0]["ports"]}
        sources = []
        for p in opening:
            for rule in p["spec"]["ingress"]:
                assert {x["port"] for x in rule["ports"]} & ports, f"{p['metadata']['name']}"
                sources.append(rule.get("from"))
        if name == "gateway":
            # Reachable from outside the namespace (the Ingress controller).
            assert None in sources, sources
        else:
            # Everything else only from named pods of this namespace.
            assert None not in sources, f"{overlay}: {name} open to anyone"
            for frm in sources:
                for peer in frm:
                    assert set(peer) == {"podSelector"}, f"{name}: {peer}"
        assert name in services, f"{name} has no Service"

    def allowed(target: str) -> set[str]:
        labels = named(objs, "Deployment", target)["spec"]["template"]["metadata"]["labels"]
        out = set()
        for p in policies:
            if not (p["spec"]["podSelector"] and selects(p["spec"]["podSelector"], labels)):
                continue
            for rule in p["spec"]["ingress"]:
                for peer in rule.get("from") or []:
                    for o, _ in pod_specs(objs):
                        if selects(peer["podSelector"], o["spec"]["template"]["metadata"]["labels"]):
                            out.add(o["metadata"]["name"])
        return out

    assert allowed("diabetes-svc") == {"gateway"}
    assert allowed("heart-svc") == {"gateway"}
    assert allowed("chain-svc") == {"gateway", "diabetes-svc", "heart-svc"}
    if overlay == "dev":
        assert allowed("anvil") == {"chain-svc"}


def test_chain_svc_is_one_recreated_replica_on_a_volume(rendered):
    overlay, objs = rendered
    d = named(objs, "Deployment", "chain-svc")
    assert d["spec"]["replicas"] == 1 and d["spec"]["strategy"] == {"type": "Recreate"}
    vols = {v["name"]: v for v in d["spec"]["template"]["spec"]["volumes"]}
    mount = [m for m in d["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
             if m["mountPath"] == "/var/lib/medchain"]
    assert mount and "persistentVolumeClaim" in vols[mount[0]["name"]], "the outbox is not on a volume"
    claim = vols[mount[0]["name"]]["persistentVolumeClaim"]["claimName"]
    assert named(objs, "PersistentVolumeClaim", claim)
    env = {e["name"]: e for e in d["spec"]["template"]["spec"]["containers"][0]["env"]}
    if overlay == "dev":
        assert env["CHAIN__CHAIN__DEV_CHAIN"]["value"] == "true"
        assert env["CHAIN__CHAIN__RPC_URL"]["value"] == "http://anvil:8545"
    else:
        assert "CHAIN__CHAIN__DEV_CHAIN" not in env
        assert "secretKeyRef" in env["CHAIN__SECRETS__SIGNER_KEY"]["valueFrom"]
        assert "secretKeyRef" in env["CHAIN__SECRETS__PATIENT_KEY"]["valueFrom"]


def test_the_gateway_reaches_scaled_services_through_headless_names(rendered):
    overlay, objs = rendered
    env = {e["name"]: e.get("value") for e in
           named(objs, "Deployment", "gateway")["spec"]["template"]["spec"]["containers"][0]["env"]}
    for key, svc, port in (("DIABETES", "diabetes-svc", 8081), ("HEART", "heart-svc", 8082)):
        assert env[f"GATEWAY__UPSTREAMS__{key}"] == f"http://{svc}:{port}"
        # Headless: the name lists every ready pod, which the gateway spreads requests over.
        assert named(objs, "Service", svc)["spec"].get("clusterIP") == "None", svc
    assert "GATEWAY__PROXY__REUSE_CONNECTIONS" not in env
    ing = named(objs, "Ingress", "gateway")
    backend = ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == "gateway"
    pdbs = {p["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] for p in of_kind(objs, "PodDisruptionBudget")}
    assert {"gateway", "heart-svc"} <= pdbs
    if overlay == "prod":
        assert ing["spec"]["tls"], "prod serves HTTPS"
        assert named(objs, "HorizontalPodAutoscaler", "heart-svc")["spec"]["minReplicas"] >= 2


def test_the_probed_ports_and_images_match_the_dockerfiles(rendered):
    overlay, objs = rendered
    for o, spec in pod_specs(objs):
        name = o["metadata"]["name"]
        dockerfile = ROOT / name / "Dockerfile"
        if name == "anvil":
            dockerfile = ROOT / "deploy/anvil.Dockerfile"
        text = dockerfile.read_text()
        port = spec["containers"][0]["ports"][0]["containerPort"]
        assert f"EXPOSE {port}" in text, f"{name}: {port} is not what {dockerfile.name} exposes"
        image = spec["containers"][0]["image"]
        assert image.split("/")[-1].split(":")[0] == name, image
