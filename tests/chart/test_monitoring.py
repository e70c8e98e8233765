"""ServiceMonitor and PrometheusRule (CRDs: structure asserted here), the Grafana dashboard ConfigMap, and the
copies of deploy/grafana/herald.json and deploy/prometheus/alerts.yml the chart ships in files/."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from conftest import CHART, NAMESPACE, RELEASE, REPO

COPIES = [
    ("files/herald.json", "deploy/grafana/herald.json"),
    ("files/alerts.yml", "deploy/prometheus/alerts.yml"),
]

METRIC = re.compile(r"\bherald_[a-z0-9_]+")
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")


def known_metrics() -> set[str]:
    """Metric families Herald registers: the "herald_..." string literals of the Rust sources."""
    names: set[str] = set()
    for source in (REPO / "crates").glob("*/src/**/*.rs"):
        names.update(re.findall(r'"(herald_[a-z0-9_]+)"', source.read_text()))
    return names


def dashboard_exprs() -> list[tuple[str, str]]:
    dashboard = json.loads((CHART / "files/herald.json").read_text())
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]


def alert_rules() -> list[dict]:
    groups = yaml.safe_load((CHART / "files/alerts.yml").read_text())["groups"]
    return [r for g in groups for r in g["rules"]]


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
    import os
    import shutil
    import subprocess

    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("HERALD_REQUIRE_PROMTOOL"):
            pytest.fail("promtool is not installed (scripts/test-chart unpacks it from Debian's prometheus package)")
        pytest.skip("promtool is not installed")
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump({"groups": rendered["external-nats"].one("PrometheusRule")["spec"]["groups"]}))
    result = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_and_alerts_use_metrics_herald_exports():
    """A misspelt metric is an empty panel or an alert that never fires: every herald_* name in an expression is a
    family Herald registers (or a histogram's _bucket/_sum/_count series)."""
    known = known_metrics()
    if not known:
        pytest.skip("no Rust sources under crates/")
    used = [(where, m) for where, expr in dashboard_exprs() for m in METRIC.findall(expr)]
    used += [(r.get("alert", r.get("record")), m) for r in alert_rules() for m in METRIC.findall(str(r["expr"]))]
    assert used
    unknown = [
        (where, m)
        for where, m in used
        if m not in known and not (m.endswith(HISTOGRAM_SERIES) and m.rsplit("_", 1)[0] in known)
    ]
    assert unknown == [], unknown


def test_dashboard_panels_follow_the_conventions():
    """Unique panel ids, the ${datasource} variable everywhere, and every Herald selector filtered by $job and
    $instance."""
    dashboard = json.loads((CHART / "files/herald.json").read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), ids
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]
            for selector in re.findall(r"herald_[a-z0-9_]+(\{[^}]*\})?", target["expr"]):
                assert 'job=~"$job"' in selector and 'instance=~"$instance"' in selector, (panel["title"], target["expr"])


def test_webhooks_row_and_alerts():
    dashboard = json.loads((CHART / "files/herald.json").read_text())
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert "Webhooks" in rows
    # the panels after the Webhooks row
    start = next(i for i, p in enumerate(dashboard["panels"]) if p["type"] == "row" and p["title"] == "Webhooks")
    after = dashboard["panels"][start + 1 :]
    end = next((i for i, p in enumerate(after) if p["type"] == "row"), len(after))
    exprs = " ".join(t["expr"] for p in after[:end] for t in p["targets"])
    for metric in (
        "herald_webhook_events_queued_total",
        "herald_webhook_events_sent_total",
        "herald_webhook_events_dead_total",
        "herald_webhook_retries_total",
        "herald_webhook_pending_events",
        "herald_webhook_lag_seconds_bucket",
    ):
        assert metric in exprs, metric
    assert "histogram_quantile(0.5," in exprs and "histogram_quantile(0.99," in exprs
    rules = {r["alert"]: r for r in alert_rules() if "alert" in r}
    dead = rules["HeraldWebhookDeadLetters"]
    assert "increase(herald_webhook_events_dead_total[10m])" in dead["expr"]
    assert "herald webhooks dead-letters" in dead["annotations"]["description"]
    assert "herald webhooks replay" in dead["annotations"]["description"]
    failing = rules["HeraldWebhookReceiverFailing"]
    assert "herald_webhook_retries_total" in failing["expr"] and "herald_webhook_events_sent_total" in failing["expr"]
    assert failing["for"] == "10m"
    for rule in (dead, failing):
        assert rule["labels"]["severity"] == "warning"


def test_every_alert_has_a_runbook_section():
    """runbook_url is docs/operations.md#<alert name in lower case>, and that section exists."""
    operations = REPO / "docs/operations.md"
    headings = set()
    if operations.exists():
        headings = {line[4:].strip().lower() for line in operations.read_text().splitlines() if line.startswith("### ")}
    for rule in alert_rules():
        if "alert" not in rule:
            continue
        anchor = rule["alert"].lower()
        assert rule["annotations"]["runbook_url"] == f"docs/operations.md#{anchor}", rule["alert"]
        if headings:
            assert anchor in headings, f"docs/operations.md has no section ### {rule['alert']}"
