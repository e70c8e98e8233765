"""ServiceMonitor, PodMonitor and PrometheusRule (CRDs: validated against crd_schemas.py in test_render.py, their
behaviour asserted here), the admin Services, the Grafana dashboard ConfigMap, and the copies of
deploy/grafana/herald.json and deploy/prometheus/alerts.yml the chart ships in files/."""

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


def selects(selector: dict, labels: dict) -> bool:
    """Does a LabelSelector (matchLabels, matchExpressions) select an object with these labels?"""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for e in selector.get("matchExpressions", []):
        key, op, values = e["key"], e["operator"], e.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


@pytest.mark.parametrize(
    ("scenario", "roles"),
    [("external-nats", ["gateway", "ingest"]), ("standalone", ["standalone"])],
)
def test_service_monitor_scrapes_the_admin_services(rendered, scenario, roles):
    r = rendered[scenario]
    sm = r.one("ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"].items() >= r.merged["metrics"]["serviceMonitor"]["labels"].items()
    spec = sm["spec"]
    assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    [endpoint] = spec["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    assert endpoint["interval"].endswith("s") and endpoint["scrapeTimeout"].endswith("s")
    # the selector picks exactly the admin Services, one per role; each exposes only the port "metrics"
    selected = [s for s in r.of_kind("Service") if selects(spec["selector"], s["metadata"]["labels"])]
    assert sorted(s["metadata"]["name"] for s in selected) == [f"{RELEASE}-herald-{role}-admin" for role in roles]
    for service in selected:
        assert [(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [("metrics", 9601, "metrics")]
        # the job of the role's pods is the role's public Service name, as before the admin Services
        role = service["metadata"]["labels"]["app.kubernetes.io/component"]
        assert service["metadata"]["labels"][spec["jobLabel"]] == f"{RELEASE}-herald-{role}"
        assert service["spec"]["publishNotReadyAddresses"] is True
        assert service["spec"]["type"] == "ClusterIP"
    # and the role label is added
    assert endpoint["relabelings"] == [
        {"sourceLabels": ["__meta_kubernetes_service_label_app_kubernetes_io_component"], "targetLabel": "role"}
    ]


@pytest.mark.parametrize("scenario", ["defaults", "external-nats", "standalone", "server-tls", "nats-dependency"])
def test_the_admin_port_is_on_its_own_service_only(rendered, scenario):
    """The admin port (no authentication) is never on the public Service, which the Ingress, HTTPRoute and a
    LoadBalancer expose."""
    r = rendered[scenario]
    for role in r.roles:
        public = r.one("Service", f"{RELEASE}-herald-{role}")
        admin = r.one("Service", f"{RELEASE}-herald-{role}-admin")
        assert "metrics" not in [p["name"] for p in public["spec"]["ports"]]
        assert 9601 not in [p["port"] for p in public["spec"]["ports"]]
        assert "metrics" not in [p["targetPort"] for p in public["spec"]["ports"]]
        assert [p["name"] for p in admin["spec"]["ports"]] == ["metrics"]
        assert admin["spec"]["selector"] == public["spec"]["selector"]


def without_runbooks(groups):
    return [
        {**g, "rules": [{**r, "annotations": {k: v for k, v in r.get("annotations", {}).items() if k != "runbook_url"}} for r in g["rules"]]}
        for g in groups
    ]


def test_prometheus_rule_carries_the_alerts_file(rendered):
    rule = rendered["external-nats"].one("PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    groups = rule["spec"]["groups"]
    # the file's rules, with only the runbook URLs changed (test_runbook_urls_are_absolute)
    assert without_runbooks(groups) == without_runbooks(yaml.safe_load((CHART / "files/alerts.yml").read_text())["groups"])
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


@pytest.mark.parametrize(
    ("scenario", "base"),
    [
        ("external-nats", "https://git.example.com/herald/blob/main/"),  # the chart's default
        ("standalone", "https://git.shop.example/ops/herald/blob/v0.1.0/"),  # set without the trailing slash
    ],
)
def test_runbook_urls_are_absolute(rendered, scenario, base):
    """Every alert's runbook_url in the PrometheusRule is metrics.prometheusRule.runbookBaseUrl + the file's path."""
    groups = rendered[scenario].one("PrometheusRule")["spec"]["groups"]
    in_file = {r["alert"]: r["annotations"]["runbook_url"] for r in alert_rules() if "alert" in r}
    rendered_urls = {r["alert"]: r["annotations"]["runbook_url"] for g in groups for r in g["rules"] if "alert" in r}
    assert rendered_urls.keys() == in_file.keys() and rendered_urls
    for alert, url in rendered_urls.items():
        assert re.fullmatch(r"https://[^\s/]+/\S+#[a-z0-9]+", url), url
        if "://" in in_file[alert]:
            assert url == in_file[alert], "an absolute runbook_url is kept"
        else:
            assert url == base + in_file[alert].lstrip("/"), (url, base, in_file[alert])
            assert "//" not in url.split("://", 1)[1], url


def test_runbook_urls_keep_absolute_ones(chart, tmp_path):
    """runbook_url values that are already absolute are kept; relative ones get the base; rules without it none."""
    from conftest import render

    moved = render(chart, {"metrics": {"prometheusRule": {"enabled": True, "runbookBaseUrl": "http://wiki.internal/herald"}}})
    urls = [r["annotations"].get("runbook_url") for g in moved.one("PrometheusRule")["spec"]["groups"] for r in g["rules"] if "alert" in r]
    assert urls and all(u.startswith("http://wiki.internal/herald/docs/operations.md#") for u in urls), urls
    # the template's scheme check, on a rule that is absolute already (the file itself has relative ones only, so
    # this is checked on the template's own logic through a copy of the chart with such a rule)
    import shutil

    copy = tmp_path / "herald"
    shutil.copytree(CHART, copy)
    alerts = yaml.safe_load((copy / "files/alerts.yml").read_text())
    alerts["groups"][0]["rules"][0]["annotations"]["runbook_url"] = "https://runbooks.example.org/herald/no-ready-gateway"
    alerts["groups"][0]["rules"].append({"record": "herald:test:sum", "expr": "sum(up)"})
    (copy / "files/alerts.yml").write_text(yaml.safe_dump(alerts))
    import helm_python as helm

    with helm.Chart.load(copy) as loaded:
        r = render(loaded, {"metrics": {"prometheusRule": {"enabled": True}}})
    rules = r.one("PrometheusRule")["spec"]["groups"][0]["rules"]
    assert rules[0]["annotations"]["runbook_url"] == "https://runbooks.example.org/herald/no-ready-gateway"
    assert rules[1]["annotations"]["runbook_url"].startswith("https://git.example.com/herald/blob/main/docs/operations.md#")
    assert "annotations" not in rules[-1]


def test_nats_exporter_is_scraped_with_the_service_monitor(rendered, chart):
    """With the NATS dependency and Herald's ServiceMonitor, a PodMonitor scrapes the NATS chart's exporter
    (nats.promExporter, on by default here): the NATS chart's selector labels and its port name prom-metrics."""
    from conftest import render

    r = rendered["nats-dependency-monitored"]
    assert r.merged["nats"]["promExporter"] == {"enabled": True, "podMonitor": {"enabled": False}}
    pm = r.one("PodMonitor")
    assert pm["metadata"]["name"] == f"{RELEASE}-herald-nats"
    assert pm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    # the nats chart's nats.selectorLabels for release "rel" (checked against nats chart 1.3.0 to 2.14.2)
    assert pm["spec"]["selector"] == {
        "matchLabels": {"app.kubernetes.io/name": "nats", "app.kubernetes.io/instance": RELEASE, "app.kubernetes.io/component": "nats"}
    }
    assert pm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert pm["spec"]["podMetricsEndpoints"] == [{"port": "prom-metrics", "path": "/metrics", "interval": "15s", "scrapeTimeout": "10s"}]
    # not without the dependency, the ServiceMonitor or the exporter; not twice when the NATS chart makes its own
    assert rendered["nats-dependency"].of_kind("PodMonitor") == []
    assert rendered["external-nats"].of_kind("PodMonitor") == []
    on = {"nats": {"enabled": True}, "metrics": {"serviceMonitor": {"enabled": True}}}
    assert render(chart, on).of_kind("PodMonitor")
    assert render(chart, {**on, "nats": {"enabled": True, "promExporter": {"enabled": False}}}).of_kind("PodMonitor") == []
    assert render(chart, {**on, "nats": {"enabled": True, "promExporter": {"podMonitor": {"enabled": True}}}}).of_kind("PodMonitor") == []
    # a renamed dependency is followed
    renamed = render(chart, {**on, "nats": {"enabled": True, "nameOverride": "bus"}})
    assert renamed.one("PodMonitor")["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == "bus"


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
