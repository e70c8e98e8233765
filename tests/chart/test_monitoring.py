"""ServiceMonitor and PrometheusRule (CRDs: structure asserted here), the Grafana dashboard ConfigMap, and the
copies of deploy/grafana/herald.json and deploy/prometheus/alerts.yml the chart ships in files/."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import CHART, NAMESPACE, RELEASE, REPO

COPIES = [
    ("files/herald.json", "deploy/grafana/herald.json"),
    ("files/alerts.yml", "deploy/prometheus/alerts.yml"),
]


@pytest.mark.parametrize(("copy", "source"), COPIES)
def test_chart_files_are_current_copies(copy, source):
    copied = CHART / copy
    original = REPO / source
    assert copied.is_file(), f"{copied} is missing: cp {source} helm/herald/{copy}"
    if not original.exists():
        pytest.skip(f"{source} does not exist yet; the chart ships its own {copy}")
    assert copied.read_bytes() == original.read_bytes(), (
        f"helm/herald/{copy} differs from {source}: run scripts/test-chart --sync (cp {source} helm/herald/{copy})"
    )


def test_prometheus_operator_objects_are_off_by_default(rendered):
    r = rendered["defaults"]
    assert r.of_kind("ServiceMonitor") == [] and r.of_kind("PrometheusRule") == []


def test_service_monitor_scrapes_both_roles_on_the_metrics_port(rendered):
    r = rendered["external-nats"]
    sm = r.one("ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    spec = sm["spec"]
    assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    [endpoint] = spec["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    assert endpoint["interval"].endswith("s") and endpoint["scrapeTimeout"].endswith("s")
    # the selector picks exactly the gateway and ingest Services, and both expose a port named "metrics"
    match_labels = spec["selector"]["matchLabels"]
    [expression] = spec["selector"]["matchExpressions"]
    selected = [
        s
        for s in r.of_kind("Service")
        if match_labels.items() <= s["metadata"]["labels"].items()
        and s["metadata"]["labels"].get(expression["key"]) in expression["values"]
    ]
    assert sorted(s["metadata"]["name"] for s in selected) == [f"{RELEASE}-herald-gateway", f"{RELEASE}-herald-ingest"]
    for service in selected:
        assert "metrics" in [p["name"] for p in service["spec"]["ports"]]


def test_prometheus_rule_carries_the_alerts_file(rendered):
    rule = rendered["external-nats"].one("PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    groups = rule["spec"]["groups"]
    assert groups == yaml.safe_load((CHART / "files/alerts.yml").read_text())["groups"]
    assert groups, "no rule groups"
    for group in groups:
        assert group["name"] and group["rules"], group
        for r in group["rules"]:
            assert ("alert" in r) != ("record" in r), r
            assert isinstance(r["expr"], (str, int, float)) and str(r["expr"]).strip(), r
            if "alert" in r:
                assert r["labels"]["severity"] in {"critical", "warning", "info"}, r
    # Prometheus templates such as {{ $labels.instance }} are passed through, not expanded by Helm
    assert "{{ $labels" in json.dumps(groups)


@pytest.mark.parametrize("scenario", ["defaults", "external-nats"])
def test_grafana_dashboard_configmap(rendered, scenario):
    cm = rendered[scenario].one("ConfigMap", f"{RELEASE}-herald-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert list(cm["data"]) == ["herald.json"]
    dashboard = json.loads(cm["data"]["herald.json"])
    assert dashboard == json.loads((CHART / "files/herald.json").read_text())
    assert dashboard["title"] and dashboard["uid"]
    assert isinstance(dashboard.get("panels"), list)


def test_dashboard_can_be_turned_off_or_moved(chart):
    from conftest import render

    assert render(chart, {"metrics": {"dashboard": {"enabled": False}}}).of_kind("ConfigMap") == [
        d for d in render(chart, {}).of_kind("ConfigMap") if not d["metadata"]["name"].endswith("-dashboard")
    ]
    moved = render(chart, {"metrics": {"dashboard": {"namespace": "monitoring", "annotations": {"grafana_folder": "Herald"}}}})
    cm = moved.one("ConfigMap", f"{RELEASE}-herald-dashboard")
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Herald"}


def test_prometheus_rule_groups_pass_promtool(rendered, tmp_path):
    """The rules as the PrometheusRule carries them load in Prometheus (when promtool is installed)."""
    import shutil
    import subprocess

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed")
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump({"groups": rendered["external-nats"].one("PrometheusRule")["spec"]["groups"]}))
    result = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
