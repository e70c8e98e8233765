"""Shared fixtures of the Helm chart tests (run them with scripts/test-chart).

The chart is linted and rendered offline with helm-python-sdk, which bundles Helm's Go library (no helm binary,
no cluster, no network); every rendered manifest is checked against the Kubernetes OpenAPI schemas that
kubernetes-validate ships, for several Kubernetes versions, and the custom resources (HTTPRoute, ServiceMonitor,
PodMonitor, PrometheusRule) against the schemas of crd_schemas.py.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "herald"
VALUES_DIR = Path(__file__).resolve().parent / "values"

# Kubernetes versions the manifests are validated against (schema sets bundled by kubernetes-validate) and Helm
# lints for: the chart's minimum (kubeVersion >=1.25), every third minor release, and the newest schema set that
# kubernetes-validate ships. Override with KUBE_VERSIONS="1.30.0 1.33.0", KUBE_VERSIONS=all (every version from 1.25
# on that kubernetes-validate has), or KUBE_VERSION=1.33.0 (that one only).
DEFAULT_KUBE_VERSIONS = ["1.25.0", "1.28.0", "1.31.0", "1.34.0", "1.37.0"]


def kube_versions() -> list[str]:
    if os.environ.get("KUBE_VERSION"):
        return [os.environ["KUBE_VERSION"]]
    wanted = os.environ.get("KUBE_VERSIONS", "").split()
    if wanted == ["all"]:
        from kubernetes_validate.utils import all_versions
        from packaging.version import Version

        return [v for v in all_versions() if Version(v) >= Version("1.25.0")]
    return wanted or DEFAULT_KUBE_VERSIONS


KUBE_VERSIONS = kube_versions()

RELEASE = "rel"
NAMESPACE = "realtime"

# Named values files of tests/chart/values, plus "defaults" (the chart's values.yaml alone).
SCENARIOS = ["defaults"] + sorted(p.stem for p in VALUES_DIR.glob("*.yaml"))


def scenario_values(name: str) -> dict[str, Any]:
    if name == "defaults":
        return {}
    return yaml.safe_load((VALUES_DIR / f"{name}.yaml").read_text()) or {}


@dataclass
class Rendered:
    """The manifests of one render: `docs` in template order, `files` template path -> text."""

    values: dict[str, Any]
    merged: dict[str, Any]
    files: dict[str, str]
    docs: list[dict[str, Any]]
    origins: list[str]  # the template each doc came from

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [d for d in self.of_kind(kind) if name is None or d["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, got {[d['metadata']['name'] for d in found]}"
        return found[0]

    @property
    def standalone(self) -> bool:
        return self.merged.get("mode") == "standalone"

    @property
    def roles(self) -> list[str]:
        """The roles this render deploys: gateway and ingest, or standalone."""
        return ["standalone"] if self.standalone else ["gateway", "ingest"]

    def deployment(self, role: str) -> dict[str, Any]:
        return self.one("Deployment", f"{RELEASE}-herald-{role}")

    def pod(self, role: str) -> dict[str, Any]:
        return self.deployment(role)["spec"]["template"]["spec"]

    def container(self, role: str) -> dict[str, Any]:
        return self.deployment(role)["spec"]["template"]["spec"]["containers"][0]

    def env(self, role: str) -> dict[str, dict[str, Any]]:
        return {e["name"]: e for e in self.container(role)["env"]}


@pytest.fixture(scope="session")
def chart():
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render(chart, values: dict[str, Any]) -> Rendered:
    files = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs: list[dict[str, Any]] = []
    origins: list[str] = []
    for path, text in sorted(files.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append(doc)
                origins.append(path)
    return Rendered(values=values, merged=chart.merge_values(values), files=files, docs=docs, origins=origins)


@pytest.fixture(scope="session")
def rendered(chart):
    """Render every scenario once per session: rendered[name] -> Rendered."""
    cache: dict[str, Rendered] = {}

    class Lookup:
        def __getitem__(self, name: str) -> Rendered:
            if name not in cache:
                cache[name] = render(chart, scenario_values(name))
            return cache[name]

    return Lookup()
