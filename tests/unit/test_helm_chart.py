"""Static checks of the Helm chart, the Grafana dashboard and the Dockerfile (no helm needed)."""

from __future__ import annotations

import json
import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml

from service import metrics
from service.config import Settings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "buddycast"
TEMPLATES = CHART / "templates"
DASHBOARD = CHART / "dashboards" / "buddycast.json"
DOCKERFILE = ROOT / "Dockerfile"

SECRET_SETTINGS = {"jwt_secret", "api_key", "database_url", "redis_url"}
ACTION = re.compile(r"\{\{-?(.*?)-?\}\}", re.S)
VALUES_REF = re.compile(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")
INCLUDE = re.compile(r"\b(?:include|template)\s+\"([^\"]+)\"")
DEFINE = re.compile(r"\{\{-?\s*define\s+\"([^\"]+)\"")
METRIC = re.compile(r"\bbuddycast_[a-z0-9_]+\b")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    loaded = load_yaml(CHART / "values.yaml")
    assert isinstance(loaded, dict)
    return loaded


def template_files() -> list[Path]:
    return sorted(TEMPLATES.glob("*.yaml"))


def template_sources() -> list[Path]:
    return [*template_files(), TEMPLATES / "_helpers.tpl", TEMPLATES / "NOTES.txt"]


def has_path(tree: Any, dotted: str) -> bool:
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def get_path(tree: Any, dotted: str) -> Any:
    node = tree
    for part in dotted.split("."):
        node = node[part]
    return node


def values_references(text: str) -> set[str]:
    """Every `.Values.a.b` path used inside template actions (`$.Values`, `.ctx.Values` too)."""
    found: set[str] = set()
    for action in ACTION.findall(text):
        found.update(match.lstrip(".") for match in VALUES_REF.findall(action))
    return found


def exposed_sample_names() -> set[str]:
    """Series names that service/metrics.py exposes, from the prometheus_client objects."""
    names: set[str] = set()
    for obj in vars(metrics).values():
        kind = getattr(obj, "_type", None)
        name = getattr(obj, "_name", None)
        if not isinstance(name, str) or kind not in {"counter", "gauge", "histogram"}:
            continue
        if kind == "counter":
            names.add(f"{name}_total")
        elif kind == "histogram":
            names.update(f"{name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(name)
    return names


def dashboard_expressions(dashboard: dict[str, Any]) -> list[str]:
    exprs: list[str] = []
    for panel in dashboard["panels"]:
        exprs.extend(target["expr"] for target in panel.get("targets", []))
        for inner in panel.get("panels", []):
            exprs.extend(target["expr"] for target in inner.get("targets", []))
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        if variable.get("type") == "query":
            exprs.append(query["query"] if isinstance(query, dict) else str(query))
    return exprs


# ---- Chart.yaml and values.yaml ----


def test_chart_metadata() -> None:
    chart = load_yaml(CHART / "Chart.yaml")
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "buddycast"
    assert str(chart["appVersion"]) == "0.1.0"
    assert re.fullmatch(r"\d+\.\d+\.\d+", str(chart["version"]))


@pytest.mark.parametrize(
    "path",
    [
        "image.repository",
        "image.tag",
        "node.replicaCount",
        "worker.replicaCount",
        "config",
        "secrets",
        "secrets.existingSecret",
        "node.autoscaling.enabled",
        "worker.autoscaling.enabled",
        "node.podDisruptionBudget.enabled",
        "worker.podDisruptionBudget.enabled",
        "node.ingress.enabled",
        "serviceMonitor.enabled",
        "dashboard.enabled",
        "migrations.enabled",
        "node.resources",
        "worker.resources",
        "node.topologySpreadConstraints",
        "worker.topologySpreadConstraints",
    ],
)
def test_values_has_required_key(values: dict[str, Any], path: str) -> None:
    assert has_path(values, path), f"values.yaml lacks {path}"


def test_optional_extras_default(values: dict[str, Any]) -> None:
    assert values["serviceMonitor"]["enabled"] is False
    assert values["dashboard"]["labels"]["grafana_dashboard"] == "1"


def test_config_keys_are_settings_and_not_secret(values: dict[str, Any]) -> None:
    settings = {f.name for f in fields(Settings)}
    config = values["config"]
    unknown = set(config) - settings
    assert not unknown, f"config keys that are not Settings fields: {sorted(unknown)}"
    leaked = set(config) & SECRET_SETTINGS
    assert not leaked, f"secret settings in the ConfigMap: {sorted(leaked)}"
    assert config["host"] == "0.0.0.0"
    assert config["port"] == 8080
    assert config["metrics_port"] == 9091


def test_secret_values_cover_the_secret_settings(values: dict[str, Any]) -> None:
    secrets = values["secrets"]
    for key in ("jwtSecret", "apiKey", "databaseUrl", "redisUrl"):
        assert key in secrets, key
        assert key in secrets["existingSecretKeys"], key
    assert set(secrets["existingSecretKeys"].values()) == {
        "BUDDYCAST_" + name.upper() for name in SECRET_SETTINGS
    }


def test_security_context_matches_the_image(values: dict[str, Any]) -> None:
    user = re.search(r"^USER\s+(\d+)\s*$", DOCKERFILE.read_text(encoding="utf-8"), re.M)
    assert user, "Dockerfile has no numeric USER"
    pod, container = values["podSecurityContext"], values["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == int(user.group(1))
    assert pod["seccompProfile"]["type"] == "RuntimeDefault"
    assert container["runAsUser"] == int(user.group(1))
    assert container["readOnlyRootFilesystem"] is True
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"]["drop"] == ["ALL"]


def test_ingress_keeps_websockets_open(values: dict[str, Any]) -> None:
    annotations = values["node"]["ingress"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "3600"
    assert annotations["nginx.ingress.kubernetes.io/proxy-send-timeout"] == "3600"


# ---- templates ----


def test_every_values_reference_exists(values: dict[str, Any]) -> None:
    missing = {
        f"{path.name}: .Values.{ref}"
        for path in template_sources()
        for ref in values_references(path.read_text(encoding="utf-8"))
        if not has_path(values, ref)
    }
    assert not missing, f"templates use values that values.yaml lacks: {sorted(missing)}"


def test_values_reference_scan_sees_references() -> None:
    # Guards the scan itself: a regex that matched nothing would pass the test above.
    sample = "{{- with .Values.node.ingress }}{{ $.Values.image.tag }}{{ .ctx.Values.secrets.x }}"
    assert values_references(sample) == {"node.ingress", "image.tag", "secrets.x"}
    total = set().union(*(values_references(p.read_text()) for p in template_sources()))
    assert len(total) > 50


@pytest.mark.parametrize("path", template_files(), ids=lambda p: p.name)
def test_template_declares_api_version_and_kind(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert re.search(r"^apiVersion: \S+", text, re.M), f"{path.name} has no apiVersion"
    assert re.search(r"^kind: [A-Z]\w+", text, re.M), f"{path.name} has no kind"


def test_every_include_is_defined() -> None:
    helpers = "\n".join(p.read_text(encoding="utf-8") for p in TEMPLATES.glob("*.tpl"))
    defined = set(DEFINE.findall(helpers))
    used = {name for p in template_sources() for name in INCLUDE.findall(p.read_text())}
    assert used, "no include found"
    assert not used - defined, f"undefined templates: {sorted(used - defined)}"


def test_expected_kinds_are_present() -> None:
    kinds: dict[str, list[str]] = {}
    for path in template_files():
        for kind in re.findall(r"^kind: (\w+)", path.read_text(encoding="utf-8"), re.M):
            kinds.setdefault(kind, []).append(path.name)
    for kind in (
        "Deployment",
        "Service",
        "Ingress",
        "Job",
        "ConfigMap",
        "Secret",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ServiceMonitor",
    ):
        assert kind in kinds, f"no template of kind {kind}"
    assert len(kinds["Deployment"]) == 2
    assert len(kinds["HorizontalPodAutoscaler"]) == 2


@pytest.mark.parametrize(("name", "role"), [("node", "node"), ("worker", "worker")])
def test_deployment_runs_its_role_with_probes(name: str, role: str) -> None:
    text = (TEMPLATES / f"{name}-deployment.yaml").read_text(encoding="utf-8")
    assert f'args: ["{role}"]' in text
    assert "checksum/config:" in text
    assert "readinessProbe" in text and "livenessProbe" in text
    assert "terminationGracePeriodSeconds" in text
    assert "mountPath: /tmp" in text and "buddycast.tmpVolume" in text
    assert "topologySpreadConstraints" in text


def test_probe_paths(values: dict[str, Any]) -> None:
    for role in ("node", "worker"):
        assert values[role]["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert values[role]["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_node_drains_before_sigterm(values: dict[str, Any]) -> None:
    text = (TEMPLATES / "node-deployment.yaml").read_text(encoding="utf-8")
    assert "preStop:" in text and "sleep" in text
    assert 3 <= values["node"]["preStopSleepSeconds"] <= 10
    # Sessions drain within ~10 s after SIGTERM, after the preStop sleep.
    assert (
        values["node"]["terminationGracePeriodSeconds"]
        >= values["node"]["preStopSleepSeconds"] + 15
    )


def test_migrations_are_a_pre_install_and_pre_upgrade_hook() -> None:
    text = (TEMPLATES / "migrations-job.yaml").read_text(encoding="utf-8")
    assert re.search(r"helm\.sh/hook: \"?pre-install,pre-upgrade\"?", text)
    assert 'args: ["migrate"]' in text
    assert "restartPolicy: Never" in text


def test_dashboard_configmap_ships_the_file() -> None:
    text = (TEMPLATES / "dashboard-configmap.yaml").read_text(encoding="utf-8")
    shipped = re.search(r'\.Files\.Get "([^"]+)"', text)
    assert shipped and (CHART / shipped.group(1)) == DASHBOARD


# ---- Grafana dashboard ----


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def test_dashboard_shape(dashboard: dict[str, Any]) -> None:
    assert 36 <= dashboard["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]


def test_exposed_names_come_from_metrics_module() -> None:
    names = exposed_sample_names()
    assert "buddycast_sessions_open" in names
    assert "buddycast_changes_committed_total" in names
    assert "buddycast_propagation_seconds_bucket" in names
    assert "buddycast_propagation_seconds" not in names


def test_dashboard_uses_only_defined_metrics(dashboard: dict[str, Any]) -> None:
    exposed = exposed_sample_names()
    used = {name for expr in dashboard_expressions(dashboard) for name in METRIC.findall(expr)}
    assert used, "no buddycast metric found in the dashboard"
    unknown = used - exposed
    assert not unknown, f"dashboard uses metrics that service/metrics.py lacks: {sorted(unknown)}"


@pytest.mark.parametrize(
    "metric",
    [
        "buddycast_sessions_open",
        "buddycast_changes_committed_total",
        "buddycast_propagation_seconds_bucket",
        "buddycast_snapshot_seconds_bucket",
        "buddycast_deliveries_total",
        "buddycast_stream_length",
        "buddycast_stream_pending",
        "buddycast_dead_letters_total",
        "buddycast_redeliveries_total",
        "buddycast_inbox_lag_seconds_bucket",
        "buddycast_outbox_coalesced_total",
        "buddycast_slow_client_closes_total",
        "buddycast_errors_total",
        "buddycast_disconnects_total",
        "buddycast_redis_call_seconds_bucket",
        "buddycast_sql_call_seconds_bucket",
    ],
)
def test_dashboard_has_panel_for(dashboard: dict[str, Any], metric: str) -> None:
    assert any(metric in expr for expr in dashboard_expressions(dashboard)), metric


def test_dashboard_quantiles_use_buckets(dashboard: dict[str, Any]) -> None:
    for expr in dashboard_expressions(dashboard):
        if "histogram_quantile" in expr:
            assert "_bucket" in expr and " le" in expr.replace("(", " "), expr


# ---- Dockerfile ----


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return DOCKERFILE.read_text(encoding="utf-8")


def test_dockerfile_two_stages_same_python(dockerfile: str) -> None:
    images = re.findall(r"^FROM\s+(\S+)", dockerfile, re.M)
    assert len(images) == 2, images
    assert images[0] == images[1] == "python:3.11-slim", images


def test_dockerfile_runtime(dockerfile: str) -> None:
    assert re.search(r"^USER\s+\d+\s*$", dockerfile, re.M), "USER must be numeric"
    assert re.search(r"^HEALTHCHECK\s", dockerfile, re.M)
    assert "/healthz" in dockerfile
    assert re.search(r"^EXPOSE\s+8080\s+9091\s*$", dockerfile, re.M)
    assert re.search(r'^ENTRYPOINT \["buddycast"\]\s*$', dockerfile, re.M)
    assert re.search(r'^CMD \["node"\]\s*$', dockerfile, re.M)
    assert "BUDDYCAST_HOST=0.0.0.0" in dockerfile
    assert "--no-index" in dockerfile
    assert "pip wheel" in dockerfile
    # The image ends as the non-root user: USER comes after the last RUN.
    last_run = max(m.start() for m in re.finditer(r"^RUN\s", dockerfile, re.M))
    assert re.search(r"^USER\s", dockerfile[last_run:], re.M)


def test_dockerignore_keeps_context_small() -> None:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    assert "*" in lines and "!service/" in lines and "!pyproject.toml" in lines
