"""Lint the chart and render it with every scenario; validate each manifest for several Kubernetes versions."""

from __future__ import annotations

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from conftest import CHART, KUBE_VERSIONS, NAMESPACE, RELEASE, SCENARIOS, scenario_values
from crd_schemas import is_custom_resource, validate_custom_resource

# Lint findings that are expected offline: the NATS dependency is declared but not downloaded into charts/
# (`helm dependency build` does that before an install with nats.enabled=true).
EXPECTED_LINT = ("chart directory is missing these dependencies: nats",)

INFO, WARNING, ERROR = 1, 2, 3


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_lint_has_no_errors_or_unexpected_warnings(scenario, kube_version):
    report = helm.lint(CHART, scenario_values(scenario), namespace=NAMESPACE, kube_version=f"v{kube_version}")
    problems = [
        m for m in report["messages"] if m["severity"] >= WARNING and not any(e in m["error"] for e in EXPECTED_LINT)
    ]
    assert report["total_charts_linted"] == 1
    assert problems == [], problems


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_manifest_is_valid_for_kubernetes(rendered, scenario, kube_version):
    """Kubernetes' own kinds against kubernetes-validate's strict schemas (no unknown field anywhere); the custom
    resources against crd_schemas.py, equally strict, with metadata checked as Kubernetes' ObjectMeta."""
    r = rendered[scenario]
    assert r.docs, "nothing rendered"
    validated = []
    for doc, origin in zip(r.docs, r.origins):
        where = f"{origin}: {doc.get('kind')} {doc.get('metadata', {}).get('name')}"
        assert {"apiVersion", "kind", "metadata"} <= doc.keys(), where
        if is_custom_resource(doc):
            problems = validate_custom_resource(doc, kube_version)
            assert problems == [], f"{where} is not a valid {doc['kind']}: {problems}"
        else:
            try:
                kubernetes_validate.validate(doc, kube_version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                pytest.fail(f"{where} is not valid for Kubernetes {kube_version}: {path}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                pytest.fail(f"{where}: no schema ({e.message}): an API version Kubernetes {kube_version} does not serve")
        validated.append(doc["kind"])
    # the core objects of every scenario
    assert {"Deployment", "Service", "ConfigMap", "ServiceAccount"} <= set(validated), validated


def test_every_kind_the_chart_can_render_is_validated(rendered):
    """No kind slips through unvalidated: across the scenarios, each rendered kind either has a kubernetes-validate
    schema or one in crd_schemas.py, and every optional kind of the chart appears in some scenario."""
    kinds = {(d["apiVersion"], d["kind"]) for s in SCENARIOS for d in rendered[s].docs}
    assert {
        ("apps/v1", "Deployment"),
        ("v1", "Service"),
        ("v1", "ConfigMap"),
        ("v1", "Secret"),
        ("v1", "ServiceAccount"),
        ("autoscaling/v2", "HorizontalPodAutoscaler"),
        ("policy/v1", "PodDisruptionBudget"),
        ("networking.k8s.io/v1", "Ingress"),
        ("networking.k8s.io/v1", "NetworkPolicy"),
        ("gateway.networking.k8s.io/v1", "HTTPRoute"),
        ("monitoring.coreos.com/v1", "ServiceMonitor"),
        ("monitoring.coreos.com/v1", "PodMonitor"),
        ("monitoring.coreos.com/v1", "PrometheusRule"),
    } == kinds


@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        pytest.param(
            {"rules": [{"backendRefs": [{"name": "svc", "port": 6001}], "timeout": {"request": "0s"}}]},
            "Additional properties are not allowed ('timeout' was unexpected)",
            id="misspelt-field",
        ),
        pytest.param({"rules": [{"timeouts": {"request": "1 hour"}}]}, "does not match", id="bad-duration"),
        pytest.param({"rules": [{"backendRefs": [{"name": "svc"}]}]}, "Must have port for Service reference", id="service-without-port"),
        pytest.param(
            {"rules": [{"timeouts": {"request": "10s", "backendRequest": "1m"}}]},
            "backendRequest timeout cannot be longer than request timeout",
            id="backend-timeout-longer",
        ),
        pytest.param({"rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "app"}}]}]}, "not a valid absolute path", id="relative-path"),
        pytest.param({"parentRefs": [{"name": "gw"}, {"name": "gw"}]}, "sectionName must be unique", id="same-parent-twice"),
    ],
)
def test_the_httproute_schema_catches_mistakes(doc, problem):
    """crd_schemas.py is not vacuous: a broken HTTPRoute is refused."""
    route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "r"}, "spec": doc}
    problems = validate_custom_resource(route, KUBE_VERSIONS[-1])
    assert any(problem in p for p in problems), problems


def test_the_monitoring_schemas_catch_mistakes():
    monitor = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": "m", "labelz": {}},
        "spec": {"selector": {}, "endpoints": [{"port": "metrics", "interval": "30"}]},
    }
    problems = validate_custom_resource(monitor, KUBE_VERSIONS[-1])
    assert any(p.startswith("metadata:") and "labelz" in p for p in problems), problems
    assert any(p.startswith("spec.endpoints.0.interval:") for p in problems), problems
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "r"},
        "spec": {"groups": [{"name": "g", "rules": [{"alert": "A", "expr": "up", "annotations": {"n": 1}}]}]},
    }
    assert any("annotations.n" in p for p in validate_custom_resource(rule, KUBE_VERSIONS[-1]))


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_names_labels_and_namespace(rendered, scenario):
    r = rendered[scenario]
    names = [(d["kind"], d["metadata"]["name"]) for d in r.docs]
    assert len(names) == len(set(names)), f"duplicate objects: {names}"
    for doc in r.docs:
        meta = doc["metadata"]
        assert meta["name"].startswith(f"{RELEASE}-herald"), meta["name"]
        assert len(meta["name"]) <= 63, meta["name"]
        assert meta["namespace"] == NAMESPACE, meta
        labels = meta["labels"]
        assert labels["app.kubernetes.io/name"] == "herald"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"


def test_long_release_names_stay_within_63_characters(chart):
    """Object names are cut so that each role's names, "-standalone-admin" included, stay valid and distinct."""
    release = "a-release-name-that-is-long-enough-to-be-cut-by-the-chart-x"
    values = {"networkPolicy": {"enabled": True}, "metrics": {"dashboard": {"enabled": False}}}
    for mode in ("cluster", "standalone"):
        files = chart.render({**values, "mode": mode}, name=release, namespace=NAMESPACE, is_install=True)
        docs = [d for path, text in files.items() if not path.endswith("NOTES.txt") for d in yaml.safe_load_all(text) if d]
        names = [(d["kind"], d["metadata"]["name"]) for d in docs]
        assert len(names) == len(set(names)), names
        for kind, name in names:
            assert len(name) <= 63, (kind, name, len(name))


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_services_select_their_deployments(rendered, scenario):
    r = rendered[scenario]
    for role in r.roles:
        deployment = r.deployment(role)
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        container_ports = {p["name"] for p in r.container(role)["ports"]}
        for name in (f"{RELEASE}-herald-{role}", f"{RELEASE}-herald-{role}-admin"):
            service = r.one("Service", name)
            selector = service["spec"]["selector"]
            assert selector.items() <= pod_labels.items(), (selector, pod_labels)
            # no other role's pods are selected
            for other in set(r.roles) - {role}:
                assert not selector.items() <= r.deployment(other)["spec"]["template"]["metadata"]["labels"].items()
            assert {p["targetPort"] for p in service["spec"]["ports"]} <= container_ports
    assert len(r.of_kind("Deployment")) == len(r.roles)
    assert len(r.of_kind("Service")) == 2 * len(r.roles)
