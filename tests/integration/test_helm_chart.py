"""The Helm chart renders valid manifests that keep the worker's operating contract.

Needs helm (``<repo>/.stack/bin/helm`` or on PATH) and kubernetes-validate and promql-parser,
all installed by ``scripts/install-tools.sh``; a missing tool fails the test, it never skips.

Every rendered manifest is validated offline: built-in kinds with kubernetes-validate's bundled
Kubernetes schemas (strict: unknown fields are errors), the CRD kinds (ServiceMonitor,
PrometheusRule, ScaledObject, TriggerAuthentication) with the minimal schemas under
``tests/fixtures/helm/crd-schemas``, since no CRD schema ships with kubernetes-validate.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "asset-event-sink"
CRD_SCHEMAS = REPO / "tests" / "fixtures" / "helm" / "crd-schemas"
INSTALL_HINT = "run scripts/install-tools.sh"
# Validate against the oldest Kubernetes the chart targets that kubernetes-validate bundles.
KUBE_VERSION = "1.31.0"
RELEASE = "sink"
NAMESPACE = "assets"
FULLNAME = f"{RELEASE}-asset-event-sink"

DEFAULT: tuple[str, ...] = ()
ALL_OPTIONS = ("ci/all-options-values.yaml",)
EXISTING_SECRET = ("ci/existing-secret-values.yaml",)
VALUES_SETS = {"default": DEFAULT, "all-options": ALL_OPTIONS, "existing-secret": EXISTING_SECRET}

# Kinds whose schema comes from tests/fixtures/helm/crd-schemas (file = lowercased kind).
CRD_KINDS = frozenset({"ServiceMonitor", "PrometheusRule", "ScaledObject", "TriggerAuthentication"})


def _tool_module(name: str) -> ModuleType:
    try:
        return __import__(name)
    except ImportError:
        pytest.fail(f"Python module {name!r} is missing: {INSTALL_HINT}", pytrace=False)


@pytest.fixture(scope="module")
def helm() -> str:
    local = REPO / ".stack" / "bin" / "helm"
    found = str(local) if os.access(local, os.X_OK) else shutil.which("helm")
    if found is None:
        pytest.fail(f"helm not found at {local} nor on PATH: {INSTALL_HINT}", pytrace=False)
    return found


@dataclass(frozen=True, slots=True)
class Rendered:
    """The manifests of one ``helm template`` run, parsed."""

    docs: tuple[dict[str, Any], ...]

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [d for d in self.all(kind) if name is None or d["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
        return found[0]


def _template_cmd(helm: str, values: tuple[str, ...], sets: tuple[str, ...]) -> list[str]:
    cmd = [
        helm,
        "template",
        RELEASE,
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--kube-version",
        KUBE_VERSION,
    ]
    for file in values:  # relative to the chart, or absolute
        cmd += ["--values", str(CHART / file)]
    for assignment in sets:
        cmd += ["--set", assignment]
    return cmd


@cache
def _render_cached(helm: str, values: tuple[str, ...], sets: tuple[str, ...]) -> Rendered:
    proc = subprocess.run(
        _template_cmd(helm, values, sets), capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, f"helm template failed:\n{proc.stderr}"
    return Rendered(tuple(d for d in yaml.safe_load_all(proc.stdout) if d))


def render(helm: str, values: tuple[str, ...] = DEFAULT, *sets: str) -> Rendered:
    return _render_cached(helm, values, sets)


def render_error(helm: str, values: tuple[str, ...] = DEFAULT, *sets: str) -> str:
    """Renders expecting failure; returns helm's error output."""
    proc = subprocess.run(
        _template_cmd(helm, values, sets), capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode != 0, "helm template succeeded where rendering must fail"
    return proc.stderr


def _pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    if doc["kind"] == "CronJob":
        return dict(doc["spec"]["jobTemplate"]["spec"]["template"]["spec"])
    return dict(doc["spec"]["template"]["spec"])


def _workloads(rendered: Rendered) -> Iterator[dict[str, Any]]:
    for kind in ("Deployment", "Job", "CronJob"):
        yield from rendered.all(kind)


# --- lint and schema validation ---------------------------------------------------------------


@pytest.mark.parametrize("values", VALUES_SETS.values(), ids=VALUES_SETS.keys())
def test_chart_passes_strict_lint_without_swallowed_template_failures(
    helm: str, values: tuple[str, ...]
) -> None:
    cmd = [helm, "lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION]
    for file in values:
        cmd += ["--values", str(CHART / file)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    # helm lint reports a template's `fail` as INFO and stops checking that template.
    assert "Fail:" not in output, output


def _validate_crd(doc: dict[str, Any]) -> None:
    schema = json.loads((CRD_SCHEMAS / f"{doc['kind'].lower()}.json").read_text())
    jsonschema.Draft7Validator(schema).validate(doc)


@pytest.mark.parametrize("values", VALUES_SETS.values(), ids=VALUES_SETS.keys())
def test_every_rendered_manifest_validates_against_its_schema(
    helm: str, values: tuple[str, ...]
) -> None:
    kv = _tool_module("kubernetes_validate")
    rendered = render(helm, values)
    problems = []
    for doc in rendered.docs:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        try:
            if doc["kind"] in CRD_KINDS:
                _validate_crd(doc)
            else:
                kv.validate(doc, KUBE_VERSION, strict=True)
        except jsonschema.ValidationError as exc:
            problems.append(f"{where}: {'.'.join(map(str, exc.path))}: {exc.message}")
        except kv.SchemaNotFoundError as exc:
            problems.append(f"{where}: {exc.message}")
    assert not problems, "\n".join(problems)


def test_all_options_render_every_optional_kind(helm: str) -> None:
    kinds = {d["kind"] for d in render(helm, ALL_OPTIONS).docs}
    assert kinds >= CRD_KINDS
    assert {
        "Deployment",
        "ConfigMap",
        "Secret",
        "Service",
        "PodDisruptionBudget",
        "Job",
        "CronJob",
    } <= kinds
    default_kinds = {d["kind"] for d in render(helm).docs}
    assert not CRD_KINDS & default_kinds, "optional CRD kinds must be off by default"


def test_values_schema_rejects_unknown_and_out_of_range_values(helm: str) -> None:
    assert "additional properties 'replicaCont'" in render_error(helm, DEFAULT, "replicaCont=2")
    assert "/config/metricsPort" in render_error(helm, DEFAULT, "config.metricsPort=0")


# --- scaling -----------------------------------------------------------------------------------


def _deployment_text(helm: str, values: tuple[str, ...]) -> str:
    proc = subprocess.run(
        [*_template_cmd(helm, values, ()), "--show-only", "templates/deployment.yaml"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return proc.stdout


def test_keda_enabled_leaves_replicas_out_of_the_deployment(helm: str) -> None:
    assert re.search(r"^\s*replicas:", _deployment_text(helm, ALL_OPTIONS), re.M) is None
    assert "replicas" not in render(helm, ALL_OPTIONS).one("Deployment")["spec"]
    assert render(helm).one("Deployment")["spec"]["replicas"] == 1


def test_scaled_object_scales_the_deployment_on_the_groups_kafka_lag(helm: str) -> None:
    rendered = render(helm, ALL_OPTIONS)
    scaled = rendered.one("ScaledObject")
    assert (
        scaled["spec"]["scaleTargetRef"]["name"] == rendered.one("Deployment")["metadata"]["name"]
    )
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (2, 12)
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    config = rendered.one("ConfigMap", FULLNAME)["data"]
    assert trigger["metadata"]["bootstrapServers"] == config["SINK_BOOTSTRAP_SERVERS"]
    assert trigger["metadata"]["consumerGroup"] == config["SINK_GROUP_ID"]
    assert trigger["metadata"]["topic"] == config["SINK_TOPIC"]
    assert trigger["metadata"]["lagThreshold"] == "5000"
    assert trigger["metadata"]["offsetResetPolicy"] == "earliest"  # the worker's default
    auth = rendered.one("TriggerAuthentication")
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]


def test_replicas_beyond_topic_partitions_fail_rendering(helm: str) -> None:
    assert "exceeds topicPartitions" in render_error(
        helm, DEFAULT, "topicPartitions=4", "replicaCount=5"
    )
    assert "exceeds topicPartitions" in render_error(
        helm, ALL_OPTIONS, "topicPartitions=6"
    )  # keda.maxReplicaCount is 12
    assert render(helm, DEFAULT, "topicPartitions=4", "replicaCount=4").one("Deployment")


# --- shutdown ----------------------------------------------------------------------------------


def test_grace_period_exceeds_the_workers_drain_timeout(helm: str) -> None:
    for values in VALUES_SETS.values():
        rendered = render(helm, values)
        grace = _pod_spec(rendered.one("Deployment"))["terminationGracePeriodSeconds"]
        drain = float(rendered.one("ConfigMap", FULLNAME)["data"]["SINK_DRAIN_TIMEOUT_S"])
        assert grace > drain
    assert _pod_spec(render(helm).one("Deployment"))["terminationGracePeriodSeconds"] == 30


@pytest.mark.parametrize(("grace", "drain"), [(20, 20), (15, 20), (30, 30.5)])
def test_rendering_fails_when_grace_period_does_not_exceed_drain_timeout(
    helm: str, tmp_path: Path, grace: int, drain: float
) -> None:
    values = tmp_path / "values.yaml"  # a file keeps 30.5 a number (--set would make a string)
    values.write_text(
        f"terminationGracePeriodSeconds: {grace}\nconfig:\n  drainTimeoutS: {drain}\n"
    )
    error = render_error(helm, (str(values),))
    assert "terminationGracePeriodSeconds" in error
    assert "drainTimeoutS" in error


def test_fractional_drain_timeout_just_below_grace_period_renders(
    helm: str, tmp_path: Path
) -> None:
    values = tmp_path / "values.yaml"
    values.write_text("terminationGracePeriodSeconds: 30\nconfig:\n  drainTimeoutS: 29.5\n")
    config = render(helm, (str(values),)).one("ConfigMap", FULLNAME)["data"]
    assert config["SINK_DRAIN_TIMEOUT_S"] == "29.5"


# --- probes, metrics ---------------------------------------------------------------------------


def test_probes_ask_healthz_and_readyz_on_the_metrics_port(helm: str) -> None:
    (container,) = _pod_spec(render(helm).one("Deployment"))["containers"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["ports"] == [{"name": "metrics", "containerPort": 9108, "protocol": "TCP"}]


def test_metrics_are_exposed_to_annotation_and_operator_based_scraping(helm: str) -> None:
    rendered = render(helm, ALL_OPTIONS)
    deployment = rendered.one("Deployment")
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "9108"
    assert annotations["prometheus.io/path"] == "/metrics"
    service = rendered.one("Service")
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 9108, "targetPort": "metrics", "protocol": "TCP"}
    ]
    monitor = rendered.one("ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    selected = monitor["spec"]["selector"]["matchLabels"]
    assert selected.items() <= service["metadata"]["labels"].items()
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_worker_selector_excludes_migration_and_partition_job_pods(helm: str) -> None:
    rendered = render(helm)
    selector = rendered.one("Deployment")["spec"]["selector"]["matchLabels"]
    assert rendered.one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == selector
    for job in (rendered.one("Job"), rendered.one("CronJob")["spec"]["jobTemplate"]):
        labels = job["spec"]["template"]["metadata"]["labels"]
        assert not selector.items() <= labels.items()


# --- security ----------------------------------------------------------------------------------


@pytest.mark.parametrize("values", VALUES_SETS.values(), ids=VALUES_SETS.keys())
def test_every_pod_runs_non_root_on_a_read_only_root_filesystem(
    helm: str, values: tuple[str, ...]
) -> None:
    workloads = list(_workloads(render(helm, values)))
    assert {w["kind"] for w in workloads} == {"Deployment", "Job", "CronJob"}
    for workload in workloads:
        pod = _pod_spec(workload)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        tmp_volumes = [v for v in pod["volumes"] if "emptyDir" in v]
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert mounts["/tmp"] in {v["name"] for v in tmp_volumes}


def test_worker_resources_default_to_the_provisional_sizing(helm: str) -> None:
    (container,) = _pod_spec(render(helm).one("Deployment"))["containers"]
    assert container["resources"] == {
        "requests": {"cpu": "500m", "memory": "256Mi"},
        "limits": {"cpu": "1", "memory": "384Mi"},
    }


# --- settings and secrets ----------------------------------------------------------------------


def _b64(value: str) -> str:
    return base64.b64decode(value).decode()


def test_settings_go_to_the_configmap_and_credentials_to_the_secret(helm: str) -> None:
    rendered = render(helm, ALL_OPTIONS)
    config = rendered.one("ConfigMap", FULLNAME)["data"]
    assert config["SINK_BOOTSTRAP_SERVERS"] == "kafka-0.kafka:9093,kafka-1.kafka:9093"
    assert config["SINK_BATCH_MAX_BYTES"] == "8388608"  # not 8.388608e+06
    assert config["SINK_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert not any("PASSWORD" in key or "DATABASE_URL" in key for key in config)
    secret = rendered.one("Secret", FULLNAME)["data"]
    assert _b64(secret["SINK_KAFKA_SASL_PASSWORD"]) == "kafka-pass"
    assert _b64(secret["SINK_DATABASE_URL"]).startswith("postgresql://asset_sink_writer:")
    (container,) = _pod_spec(rendered.one("Deployment"))["containers"]
    assert {"configMapRef": {"name": FULLNAME}} in container["envFrom"]
    assert {"secretRef": {"name": FULLNAME}} in container["envFrom"]


def test_credential_named_property_in_configmap_values_fails_rendering(helm: str) -> None:
    error = render_error(helm, DEFAULT, "config.kafka.sasl\\.password=oops")
    assert "secret.kafka" in error


def test_worker_managed_kafka_property_fails_rendering(helm: str) -> None:
    assert "managed by the worker" in render_error(
        helm, DEFAULT, "config.kafka.enable\\.auto\\.commit=true"
    )


def test_existing_secret_is_used_instead_of_creating_one(helm: str) -> None:
    rendered = render(helm, EXISTING_SECRET)
    assert rendered.all("Secret") == []
    for workload in (rendered.one("Deployment"), rendered.one("CronJob")):
        (container,) = _pod_spec(workload)["containers"]
        assert {"secretRef": {"name": "asset-event-sink-credentials"}} in container["envFrom"]
    (migrate,) = _pod_spec(rendered.one("Job"))["containers"]
    (url,) = [e for e in migrate["env"] if e["name"] == "SINK_DATABASE_URL"]
    assert url["valueFrom"]["secretKeyRef"] == {
        "name": "asset-event-sink-owner",
        "key": "OWNER_DATABASE_URL",
    }
    assert render(helm).one("Secret", FULLNAME)  # without existingSecret the chart makes one


def test_existing_secret_together_with_secret_values_fails_rendering(helm: str) -> None:
    assert "not both" in render_error(helm, EXISTING_SECRET, "secret.databaseUrl=postgresql://x")


def test_config_change_rolls_the_worker_pods(helm: str) -> None:
    def checksum(*sets: str) -> str:
        deployment = render(helm, DEFAULT, *sets).one("Deployment")
        return str(deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    assert checksum() != checksum("config.batchMaxEvents=1000")


# --- migration and partitions ------------------------------------------------------------------


def test_migration_job_runs_before_install_and_upgrade_as_a_hook(helm: str) -> None:
    rendered = render(helm, ALL_OPTIONS)
    job = rendered.one("Job")
    annotations = job["metadata"]["annotations"]
    assert set(annotations["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    policies = set(annotations["helm.sh/hook-delete-policy"].split(","))
    assert {"before-hook-creation", "hook-succeeded"} <= policies
    (container,) = _pod_spec(job)["containers"]
    assert [*container["command"], *container["args"]] == [
        "asset-sink",
        "migrate",
        "--with-reference-fks",
    ]
    assert _pod_spec(job)["restartPolicy"] == "Never"
    # Its URL (the owner's, not the writer's) lives in a hook Secret created before the Job.
    (url,) = [e for e in container["env"] if e["name"] == "SINK_DATABASE_URL"]
    hook_secret = rendered.one("Secret", url["valueFrom"]["secretKeyRef"]["name"])
    secret_annotations = hook_secret["metadata"]["annotations"]
    assert secret_annotations["helm.sh/hook"] == annotations["helm.sh/hook"]
    assert int(secret_annotations["helm.sh/hook-weight"]) < int(annotations["helm.sh/hook-weight"])
    assert _b64(hook_secret["data"]["SINK_DATABASE_URL"]).startswith(
        "postgresql://asset_sink_owner:"
    )
    (default_job,) = render(helm).all("Job")
    assert _pod_spec(default_job)["containers"][0]["args"] == ["migrate"]


def test_partition_cronjob_ensures_partitions_three_months_ahead(helm: str) -> None:
    cronjob = render(helm).one("CronJob")
    (container,) = _pod_spec(cronjob)["containers"]
    assert [*container["command"], *container["args"]] == [
        "asset-sink",
        "partitions",
        "ensure",
        "--ahead",
        "3",
    ]
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    fields = cronjob["spec"]["schedule"].split()
    assert len(fields) == 5
    assert fields[3] == "*", "must run in every month, ahead of each month boundary"


# --- alerts and dashboard ----------------------------------------------------------------------


@cache
def _declared_series() -> frozenset[str]:
    """Every series name the worker exports (from its metrics registry)."""
    from sink import metrics

    names: set[str] = set()
    for family in metrics.REGISTRY.collect():
        for suffix in ("", "_total", "_bucket", "_sum", "_count", "_created"):
            names.add(family.name + suffix)
    return frozenset(names)


_GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$namespace": "assets"}


def _dashboard(helm: str) -> dict[str, Any]:
    configmap = render(helm, ALL_OPTIONS).one("ConfigMap", f"{FULLNAME}-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    (body,) = configmap["data"].values()
    dashboard: dict[str, Any] = json.loads(body)
    return dashboard


def _check_promql(promql: ModuleType, expr: str) -> set[str]:
    """Parses ``expr`` (raises on a syntax error) and returns the asset_sink_* series it reads."""
    promql.parse(expr)
    return set(re.findall(r"\basset_sink_[a-z_]+", expr))


def test_alert_rules_parse_and_read_only_series_the_worker_exports(helm: str) -> None:
    promql = _tool_module("promql_parser")
    rule = render(helm, ALL_OPTIONS).one("PrometheusRule")
    rules = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    read: set[str] = set()
    for alert in rules.values():
        read |= _check_promql(promql, alert["expr"])
        assert alert["labels"]["team"] == "assets"
    assert read <= _declared_series(), read - _declared_series()
    assert "asset_sink_consumer_lag" in rules["AssetEventSinkConsumerLagGrowing"]["expr"]
    assert "time() - max" in rules["AssetEventSinkNoCommits"]["expr"]
    assert "asset_sink_last_commit_timestamp_seconds" in rules["AssetEventSinkNoCommits"]["expr"]
    assert "asset_sink_dlq_messages_total" in rules["AssetEventSinkDeadLetters"]["expr"]
    assert "asset_sink_ready" in rules["AssetEventSinkNotReady"]["expr"]
    assert "up{" in rules["AssetEventSinkDown"]["expr"]
    assert f'job="{FULLNAME}"' in rules["AssetEventSinkDown"]["expr"]


def test_dashboard_queries_parse_and_cover_the_operating_signals(helm: str) -> None:
    promql = _tool_module("promql_parser")
    read: set[str] = set()
    for panel in _dashboard(helm)["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in _GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, f"unknown dashboard variable in {expr}"
            read |= _check_promql(promql, expr)
    assert read <= _declared_series(), read - _declared_series()
    assert {
        "asset_sink_events_written_total",
        "asset_sink_consumer_lag",
        "asset_sink_consumer_lag_seconds",
        "asset_sink_events_rejected_total",
        "asset_sink_batch_duration_seconds_bucket",
        "asset_sink_ingest_delay_seconds_bucket",
        "asset_sink_last_commit_timestamp_seconds",
    } <= read
