"""Lint the chart and render it with every scenario; validate each manifest against the Kubernetes schemas."""

from __future__ import annotations

import helm_python as helm
import kubernetes_validate
import pytest

from conftest import CHART, KUBE_VERSION, NAMESPACE, RELEASE, SCENARIOS, scenario_values

# API groups of Prometheus Operator CRDs: kubernetes-validate has no schema for them, their structure is asserted
# in test_monitoring.py instead.
CRD_GROUPS = ("monitoring.coreos.com/",)

# Lint findings that are expected offline: the NATS dependency is declared but not downloaded into charts/
# (`helm dependency build` does that before an install with nats.enabled=true).
EXPECTED_LINT = ("chart directory is missing these dependencies: nats",)

INFO, WARNING, ERROR = 1, 2, 3


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_lint_has_no_errors_or_unexpected_warnings(scenario):
    report = helm.lint(CHART, scenario_values(scenario), namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}")
    problems = [
        m for m in report["messages"] if m["severity"] >= WARNING and not any(e in m["error"] for e in EXPECTED_LINT)
    ]
    assert report["total_charts_linted"] == 1
    assert problems == [], problems


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_manifest_is_valid_for_kubernetes(rendered, scenario):
    r = rendered[scenario]
    assert r.docs, "nothing rendered"
    validated = []
    for doc, origin in zip(r.docs, r.origins):
        where = f"{origin}: {doc.get('kind')} {doc.get('metadata', {}).get('name')}"
        assert {"apiVersion", "kind", "metadata"} <= doc.keys(), where
        if doc["apiVersion"].startswith(CRD_GROUPS):
            continue
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            pytest.fail(f"{where} is not valid for Kubernetes {KUBE_VERSION}: {path}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            pytest.fail(f"{where}: no schema ({e.message}): an API version Kubernetes {KUBE_VERSION} does not serve")
        validated.append(doc["kind"])
    # the core objects of every scenario
    assert {"Deployment", "Service", "ConfigMap", "ServiceAccount"} <= set(validated), validated


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


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_services_select_their_deployments(rendered, scenario):
    r = rendered[scenario]
    for role in ("gateway", "ingest"):
        service = r.one("Service", f"{RELEASE}-herald-{role}")
        deployment = r.deployment(role)
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        selector = service["spec"]["selector"]
        assert selector.items() <= pod_labels.items(), (selector, pod_labels)
        assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        # the other role's pods are not selected
        other = r.deployment("ingest" if role == "gateway" else "gateway")
        assert not selector.items() <= other["spec"]["template"]["metadata"]["labels"].items()
        ports = {p["name"]: p for p in r.container(role)["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports.keys()
