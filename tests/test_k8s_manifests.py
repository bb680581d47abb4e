"""Offline checks of the Kubernetes deployment: ``infra/k8s/`` and the ``Dockerfile``.

Nothing here needs a cluster, Docker or Helm: the manifests are validated against the Kubernetes
JSON schemas that ``kubernetes-validate`` ships (strict: unknown fields fail; a kind without a
schema, such as a CRD or a ``kustomization.yaml``, fails), every YAML file (Helm values included)
is linted by ``yamllint`` with ``infra/k8s/.yamllint``, and what the files say is compared with
the code: the serving port and health path, the ``RECLOOP_*`` variable names, the pinned torch
and Airflow versions, the names one object uses to refer to another.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_validate import utils as kv
from yamllint import config as yl_config
from yamllint import linter as yl_linter

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "infra" / "k8s"
DOCKERFILE = REPO / "Dockerfile"
SETTINGS_MODULES = (REPO / "pipelines" / "core" / "settings.py", REPO / "serving" / "config.py")
KUBE_VERSIONS = ("1.30.0", "1.37.0")
"""Oldest and newest Kubernetes the manifests are validated against."""
ENV_NAME = re.compile(r"\bRECLOOP_[A-Z0-9_]*[A-Z0-9]\b")


def yaml_files() -> list[Path]:
    """Every YAML file under infra/k8s/ (by suffix)."""
    return sorted(p for p in K8S.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())


def is_values(path: Path) -> bool:
    """A Helm values file: named ``values*.yaml`` (everything else must be a manifest)."""
    return path.name.startswith("values")


def manifest_files() -> list[Path]:
    return [p for p in yaml_files() if not is_values(p)]


def documents(path: Path) -> list[Any]:
    """The non-empty YAML documents of ``path``."""
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def all_resources() -> list[dict]:
    return [r for p in manifest_files() for r in documents(p)]


def resource(kind: str, name: str) -> dict:
    found = [r for r in all_resources() if r["kind"] == kind and r["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def values(name: str) -> dict:
    return documents(K8S / name)[0]


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` of each Dockerfile instruction, continuations joined."""
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def serving_default_port() -> int:
    """``ServingConfig.port``'s default, read from the code (serving/config.py)."""
    from serving.config import ServingConfig

    return {f.name: f.default for f in dataclasses.fields(ServingConfig)}["port"]


# --- schemas and lint -----------------------------------------------------------------------------


def test_the_deployment_files_are_there() -> None:
    names = {rel(p) for p in yaml_files()}
    assert {"infra/k8s/values-celery.yaml", "infra/k8s/values-kubernetes.yaml"} <= names
    kinds = {r["kind"] for r in all_resources()}
    expected = {"Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap", "StatefulSet",
                "Secret", "Job", "PersistentVolumeClaim"}  # fmt: skip
    assert expected <= kinds


@pytest.mark.parametrize("path", manifest_files(), ids=rel)
def test_manifests_are_built_in_kinds_valid_in_strict_mode(path: Path) -> None:
    """kubernetes-validate --strict, except that a kind without a schema (a CRD, a Kustomization,
    a values file not named values*.yaml) fails instead of warning."""
    docs = documents(path)
    assert docs, f"{rel(path)}: no document"
    for doc in docs:
        assert isinstance(doc, dict) and {"apiVersion", "kind", "metadata"} <= doc.keys(), (
            f"{rel(path)}: not a Kubernetes manifest (Helm values are named values*.yaml)"
        )
        for version in KUBE_VERSIONS:
            try:
                kv.validate(doc, version, strict=True)
            except kv.SchemaNotFoundError:
                pytest.fail(f"{rel(path)}: {doc['apiVersion']} {doc['kind']} is not built in")
            except kv.ValidationError as exc:
                where = ".".join(str(p) for p in exc.path)
                pytest.fail(f"{rel(path)} {doc['kind']}/{doc['metadata'].get('name')} "
                            f"(Kubernetes {version}): {where}: {exc.message}")  # fmt: skip


def test_every_yaml_file_passes_yamllint() -> None:
    conf = yl_config.YamlLintConfig(file=str(K8S / ".yamllint"))
    problems = [
        f"{rel(p)}:{pr.line}:{pr.column} {pr.level} {pr.message}"
        for p in yaml_files()
        for pr in yl_linter.run(p.read_text(), conf, str(p))
    ]
    assert not problems, "\n".join(problems)


def test_values_files_are_helm_values_for_both_executors() -> None:
    celery, kube = values("values-celery.yaml"), values("values-kubernetes.yaml")
    assert celery["executor"] == "CeleryExecutor" and kube["executor"] == "KubernetesExecutor"
    assert celery["data"]["brokerUrlSecretName"] and not kube["data"].get("brokerUrlSecretName")
    lock = (REPO / "requirements.lock").read_text()
    airflow = re.search(r"^apache-airflow==(\S+)$", lock, re.M).group(1)
    dags = dockerfile_workdir() + "/dags"
    for v in (celery, kube):
        assert "apiVersion" not in v and "kind" not in v
        assert v["airflowVersion"] == airflow, "airflowVersion is not requirements.lock's Airflow"
        assert v["dags"]["gitSync"]["enabled"] is False  # baked into the image
        assert v["dags"]["persistence"]["enabled"] is False
        assert v["config"]["core"]["dags_folder"] == dags, "not where the Dockerfile puts dags/"
        assert v["postgresql"]["enabled"] is False and v["redis"]["enabled"] is False


# --- what the files say against the code ------------------------------------------------------------


def test_serving_deployment_probes_and_port_match_the_service() -> None:
    dep = resource("Deployment", "recloop-serving")
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    ports = {p.get("name"): p["containerPort"] for p in container["ports"]}

    def port_of(ref: str | int) -> int:
        return ports[ref] if isinstance(ref, str) else ref

    ready, live = container["readinessProbe"]["httpGet"], container["livenessProbe"]["httpGet"]
    assert ready["path"] == "/health/ready"
    assert live["path"] == "/health/live"
    port = serving_default_port()
    assert port_of(ready["port"]) == port and port_of(live["port"]) == port
    assert list(ports.values()) == [port], "containerPort is not ServingConfig.port"
    args = container["command"] + container["args"]
    assert args[:2] == ["recloop", "serve"] and int(args[args.index("--port") + 1]) == port
    (svc_port,) = resource("Service", "recloop-serving")["spec"]["ports"]
    assert port_of(svc_port["targetPort"]) == port
    hpa = resource("HorizontalPodAutoscaler", "recloop-serving")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == "recloop-serving"


def test_every_recloop_variable_named_exists_in_the_settings() -> None:
    """A RECLOOP_* name in a manifest, values file, the guide or the Dockerfile that neither
    pipelines/core/settings.py nor serving/config.py knows is a typo (it would be ignored)."""
    known = {m for p in SETTINGS_MODULES for m in ENV_NAME.findall(p.read_text())}
    sources = [*yaml_files(), K8S / "README.md", DOCKERFILE]
    used = {(rel(p), m) for p in sources for m in ENV_NAME.findall(p.read_text())}
    assert {"RECLOOP_HOME", "RECLOOP_REDIS_URL", "RECLOOP_MLFLOW_URI"} <= {m for _, m in used}
    unknown = sorted(f"{where}: {name}" for where, name in used if name not in known)
    assert not unknown, "not a setting: " + ", ".join(unknown)


def walk(node: Any) -> Iterator[dict]:
    """Every mapping inside ``node``."""
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v)


def references(doc: Any) -> Iterator[tuple[str, str, str | None]]:
    """``(kind, name, key)`` of the ConfigMaps, Secrets and claims ``doc`` refers to."""
    for m in walk(doc):
        if "configMapRef" in m:
            yield "ConfigMap", m["configMapRef"]["name"], None
        if "secretRef" in m:
            yield "Secret", m["secretRef"]["name"], None
        if "secretKeyRef" in m:
            yield "Secret", m["secretKeyRef"]["name"], m["secretKeyRef"]["key"]
        if isinstance(m.get("configMap"), dict):
            yield "ConfigMap", m["configMap"]["name"], None
        if "persistentVolumeClaim" in m:
            yield "PersistentVolumeClaim", m["persistentVolumeClaim"]["claimName"], None


def chart_references(v: dict) -> Iterator[tuple[str, str, str | None]]:
    """What a values file of the Airflow chart refers to (secret names and their keys)."""
    for key, secret_key in (("metadataSecretName", "connection"),
                            ("brokerUrlSecretName", "connection")):  # fmt: skip
        if v["data"].get(key):
            yield "Secret", v["data"][key], secret_key
    for key, secret_key in (("fernetKeySecretName", "fernet-key"),
                            ("apiSecretKeySecretName", "api-secret-key"),
                            ("jwtSecretName", "jwt-secret")):  # fmt: skip
        yield "Secret", v[key], secret_key
    yield from references(yaml.safe_load(v["extraEnvFrom"]))
    yield from references(v["volumes"])


def test_every_reference_names_an_object_defined_here() -> None:
    defined = {(r["kind"], r["metadata"]["name"]): r for r in all_resources()}
    refs = [(rel(p), ref) for p in manifest_files() for d in documents(p) for ref in references(d)]
    for name in ("values-celery.yaml", "values-kubernetes.yaml"):
        refs += [(name, ref) for ref in chart_references(values(name))]
    claims = {t["metadata"]["name"] for r in all_resources() if r["kind"] == "StatefulSet"
              for t in r["spec"].get("volumeClaimTemplates", [])}  # fmt: skip
    missing = []
    for where, (kind, name, key) in refs:
        obj = defined.get((kind, name))
        if obj is None and not (kind == "PersistentVolumeClaim" and name in claims):
            missing.append(f"{where}: {kind} {name}")
        elif key is not None and key not in {**obj.get("data", {}), **obj.get("stringData", {})}:
            missing.append(f"{where}: key {key} of {kind} {name}")
    assert len(refs) > 10 and not missing, missing


def test_services_select_pods_that_have_their_ports() -> None:
    pods = [r["spec"]["template"] for r in all_resources()
            if r["kind"] in ("Deployment", "StatefulSet")]  # fmt: skip
    for svc in (r for r in all_resources() if r["kind"] == "Service"):
        sel = svc["spec"]["selector"]
        chosen = [p for p in pods if sel.items() <= p["metadata"]["labels"].items()]
        assert chosen, f"Service {svc['metadata']['name']} selects no pod"
        names = {cp.get("name") for p in chosen for c in p["spec"]["containers"]
                 for cp in c.get("ports", [])}  # fmt: skip
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in names, f"{svc['metadata']['name']}: {port['targetPort']}"


# --- Dockerfile -------------------------------------------------------------------------------------


def dockerfile_workdir() -> str:
    (workdir,) = [a for i, a in dockerfile_instructions(DOCKERFILE.read_text()) if i == "WORKDIR"]
    return workdir


def test_dockerfile_copies_what_exists_and_pins_the_lock() -> None:
    steps = dockerfile_instructions(DOCKERFILE.read_text())
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    copies = [shlex.split(a) for i, a in steps if i == "COPY"]
    sources = [s for c in copies for s in c[:-1] if not s.startswith("--")]
    for src in sources:
        assert (REPO / src).exists(), f"COPY {src}: not in the repository"
        assert "!" + src.rstrip("/") in [x.rstrip("/") for x in ignore], f".dockerignore: {src}"
    assert {"dags/", "feature_repo/", "requirements.lock"} <= set(sources)
    lock = (REPO / "requirements.lock").read_text()
    torch = re.search(r"^torch==(\S+)$", lock, re.M).group(1)
    runs = " ".join(a for i, a in steps if i == "RUN")
    assert re.findall(r"torch==([\w.+]+)", runs) == [torch], "torch pin differs from the lock"
    assert "--index-url https://download.pytorch.org/whl/cpu" in runs
    assert "-r requirements.lock" in runs
    assert [a for i, a in steps if i == "FROM"] == ["python:3.11-slim"]


def test_dockerfile_runs_recloop_as_a_user_on_the_serving_port() -> None:
    steps = dict(reversed(dockerfile_instructions(DOCKERFILE.read_text())))  # first of each
    port = serving_default_port()
    assert steps["USER"] not in ("root", "0")
    assert steps["EXPOSE"] == str(port)
    assert f"http://127.0.0.1:{port}/health/ready" in steps["HEALTHCHECK"]
    entry = yaml.safe_load(steps["ENTRYPOINT"])  # exec form: a JSON list
    script = (REPO / "infra/k8s/entrypoint.sh").read_text()
    assert entry == ["recloop-entrypoint"] and 'exec recloop "$@"' in script
