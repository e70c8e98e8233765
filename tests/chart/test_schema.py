"""values.schema.json: the chart's values pass, bad values are refused by install/upgrade/template and lint."""

from __future__ import annotations

import json

import helm_python as helm
import pytest

from conftest import CHART, SCENARIOS, render, scenario_values

# (values, a fragment of Helm's message naming the problem)
BAD_VALUES = [
    pytest.param({"gateway": {"drainWindow": "30s"}}, "/gateway/drainWindow", id="drain-window-not-an-integer"),
    pytest.param({"gateway": {"drainWindow": -1}}, "/gateway/drainWindow", id="negative-drain-window"),
    pytest.param({"config": {"activity_timeout": 0}}, "/config/activity_timeout", id="activity-timeout-zero"),
    pytest.param({"config": {"activty_timeout": 60}}, "activty_timeout", id="typo-in-a-config-key"),
    pytest.param({"confg": {}}, "confg", id="typo-at-the-top-level"),
    pytest.param({"apps": {"source": "file"}}, "/apps/source", id="unknown-app-source"),
    pytest.param({"apps": {"list": [{"id": "a", "key": "k"}, {"id": "b", "key": "l"}]}}, "/apps/list", id="two-apps-from-env"),
    pytest.param({"apps": {"list": [{"id": "a", "key": "k", "client_event": True}]}}, "client_event", id="typo-in-an-app-key"),
    pytest.param({"apps": {"list": []}}, "/apps/list", id="no-app"),
    pytest.param({"apps": {"source": "config", "list": [{"id": "a", "key": "k", "secret": "s", "webhooks": [{"url": "ftp://shop.example/hook"}]}]}}, "/apps/list/0/webhooks/0/url", id="webhook-url-not-http"),
    pytest.param({"apps": {"source": "config", "list": [{"id": "a", "key": "k", "secret": "s", "webhooks": [{"url": "https://shop.example/hook", "events": ["member_joined"]}]}]}}, "/apps/list/0/webhooks/0/events/0", id="unknown-webhook-event"),
    pytest.param({"apps": {"source": "config", "list": [{"id": "a", "key": "k", "secret": "s", "webhooks": [{"url": "https://shop.example/hook", "event": ["member_added"]}]}]}}, "event", id="typo-in-a-webhook-key"),
    pytest.param({"apps": {"source": "config", "list": [{"id": "a", "key": "k", "secret": "s", "webhooks": [{"events": ["member_added"]}]}]}}, "url", id="webhook-without-url"),
    pytest.param({"config": {"webhook_batch_size": 0}}, "/config/webhook_batch_size", id="webhook-batch-size-zero"),
    pytest.param({"natsClient": {"webhookAckWaitSecs": 0}}, "/natsClient/webhookAckWaitSecs", id="webhook-ack-wait-zero"),
    pytest.param({"natsClient": {"webhookStream": "herald.webhooks"}}, "/natsClient/webhookStream", id="webhook-stream-with-a-dot"),
    pytest.param({"natsClient": {"servers": ["nats.example.com:4222"]}}, "/natsClient/servers/0", id="nats-url-without-scheme"),
    pytest.param({"natsClient": {"kvReplicas": 7}}, "/natsClient/kvReplicas", id="kv-replicas-over-5"),
    pytest.param({"natsClient": {"tls": {"certKey": "tls.crt"}}}, "/natsClient/tls/keyKey", id="client-cert-without-key"),
    pytest.param({"gateway": {"pdb": {"minAvailable": "half"}}}, "/gateway/pdb/minAvailable", id="pdb-min-available-not-a-number-or-percentage"),
    pytest.param({"gateway": {"autoscaling": {"targetCPUUtilizationPercentage": 150}}}, "targetCPUUtilizationPercentage", id="cpu-target-over-100"),
    pytest.param({"logFormat": "yaml"}, "/logFormat", id="unknown-log-format"),
    pytest.param({"ingress": {"host": "https://ws.example.com"}}, "/ingress/host", id="ingress-host-with-scheme"),
    pytest.param({"metrics": {"serviceMonitor": {"interval": "30"}}}, "/metrics/serviceMonitor/interval", id="interval-without-unit"),
    # issue 18: the new values
    pytest.param({"mode": "single"}, "/mode", id="unknown-mode"),
    pytest.param({"standalone": {"replicas": 2}}, "replicas", id="standalone-has-no-replicas"),
    pytest.param({"standalone": {"autoscaling": {"enabled": True}}}, "autoscaling", id="standalone-has-no-autoscaling"),
    pytest.param({"standalone": {"drainWindow": "0"}}, "/standalone/drainWindow", id="standalone-drain-window-not-an-integer"),
    pytest.param({"httpRoute": {"enabled": True}}, "/httpRoute/parentRefs", id="httproute-without-parent"),
    pytest.param({"httpRoute": {"enabled": True, "parentRefs": [{"namespace": "gw"}]}}, "name", id="parent-ref-without-name"),
    pytest.param({"httpRoute": {"parentRefs": [{"name": "gw", "section": "https"}]}}, "section", id="typo-in-a-parent-ref"),
    pytest.param({"httpRoute": {"hostnames": ["https://ws.example.com"]}}, "/httpRoute/hostnames/0", id="hostname-with-scheme"),
    pytest.param({"httpRoute": {"timeouts": {"request": "1 hour"}}}, "/httpRoute/timeouts/request", id="timeout-not-a-gateway-duration"),
    pytest.param({"httpRoute": {"timeouts": {"idle": "1h"}}}, "idle", id="timeout-httproute-does-not-have"),
    pytest.param({"networkPolicy": {"admin": {"namespaceSelector": {"matchLabel": {"a": "b"}}}}}, "matchLabel", id="typo-in-a-label-selector"),
    pytest.param({"networkPolicy": {"clientFrom": [{"ipBlock": {"except": ["10.0.0.0/8"]}}]}}, "cidr", id="ip-block-without-cidr"),
    pytest.param({"networkPolicy": {"clientFrom": [{}]}}, "/networkPolicy/clientFrom/0", id="empty-peer"),
    pytest.param({"networkPolicy": {"egress": {"webhooks": {"cidrs": ["203.0.113.7"]}}}}, "/networkPolicy/egress/webhooks/cidrs/0", id="webhook-cidr-without-prefix-length"),
    pytest.param({"networkPolicy": {"egress": {"nats": {"ports": [70000]}}}}, "/networkPolicy/egress/nats/ports/0", id="nats-port-out-of-range"),
    pytest.param({"networkPolicy": {"egress": {"dns": {"to": [], "ports": [53]}}}}, "ports", id="dns-ports-not-configurable"),
    pytest.param({"extraVolumes": [{"secret": {"secretName": "x"}}]}, "name", id="extra-volume-without-name"),
    pytest.param({"extraVolumes": [{"name": "Herald_TLS", "secret": {"secretName": "x"}}]}, "/extraVolumes/0/name", id="extra-volume-name-not-a-dns-label"),
    pytest.param({"extraVolumeMounts": [{"name": "tls", "mountPath": "etc/tls"}]}, "/extraVolumeMounts/0/mountPath", id="relative-mount-path"),
    pytest.param({"extraVolumeMounts": [{"name": "tls", "mountpath": "/etc/tls"}]}, "mountpath", id="typo-in-a-volume-mount"),
    pytest.param({"extraEnvFrom": [{"prefix": "X_"}]}, "/extraEnvFrom/0", id="env-from-without-a-source"),
    pytest.param({"extraEnvFrom": [{"secretRef": {"name": "a"}, "configMapRef": {"name": "b"}}]}, "/extraEnvFrom/0", id="env-from-with-two-sources"),
    pytest.param({"config": {"tls_bind": "0.0.0.0:6443"}}, "tls_cert", id="tls-bind-without-certificate"),
    pytest.param({"config": {"tls_bind": "6443", "tls_cert": "/c", "tls_key": "/k"}}, "/config/tls_bind", id="tls-bind-without-address"),
    pytest.param({"config": {"tls_certificate": "/c"}}, "tls_certificate", id="typo-in-a-tls-key"),
    pytest.param({"gateway": {"service": {"tlsPort": 0}}}, "/gateway/service/tlsPort", id="tls-port-zero"),
    pytest.param({"metrics": {"prometheusRule": {"runbookBaseUrl": "docs/"}}}, "/metrics/prometheusRule/runbookBaseUrl", id="runbook-base-not-absolute"),
    pytest.param({"apps": {"list": [{"id": "a", "key": "k", "client_events": "yes"}]}}, "/apps/list/0/client_events", id="client-events-not-a-boolean"),
]


@pytest.mark.parametrize(("values", "where"), BAD_VALUES)
def test_an_invalid_value_is_rejected(chart, values, where):
    with pytest.raises(helm.HelmValuesError) as rendering:
        render(chart, values)
    assert where in str(rendering.value), str(rendering.value)
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema(values)
    report = helm.lint(CHART, values)
    assert any(where in e for e in report["errors"]), report["errors"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_scenario_passes_the_schema(chart, scenario):
    chart.validate_schema(scenario_values(scenario))


def test_the_schema_is_strict_draft_07(chart):
    schema = chart.schema
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["additionalProperties"] is False
    # every key of values.yaml is described by the schema, so the strict schema does not refuse the defaults
    def walk(values, node, path):
        if not isinstance(values, dict) or node.get("type") != "object" or "properties" not in node:
            return
        for key, value in values.items():
            if node.get("additionalProperties") is False:
                assert key in node["properties"], f"{path}.{key} is in values.yaml but not in values.schema.json"
            if key in node["properties"]:
                walk(value, node["properties"][key], f"{path}.{key}")

    walk(chart.values, schema, "")


def test_template_checks_beyond_the_schema(chart):
    """Combinations the schema cannot express fail rendering with a message naming the value."""
    cases = [
        ({"apps": {"list": [{"id": "a", "key": "k", "secret": "s", "max_connections": 10}]}}, "apps.list[0].max_connections: with apps.source=env"),
        ({"apps": {"list": [{"id": "a", "key": "k", "secret": "s", "webhooks": [{"url": "https://shop.example/hook"}]}]}}, "apps.list[0].webhooks"),
        ({"apps": {"source": "config", "list": [{"id": "a", "key": "k"}]}}, "apps.list[0].secret is empty"),
        ({"natsClient": {"servers": []}}, "natsClient.servers is empty"),
        ({"natsClient": {"tls": {"enabled": True}}}, "natsClient.tls.secretName is required"),
        ({"ingress": {"enabled": True, "tls": {"enabled": True}}}, "ingress.tls.secretName is required"),
        ({"gateway": {"autoscaling": {"minReplicas": 5, "maxReplicas": 3}}}, "minReplicas (5) is larger than maxReplicas (3)"),
        ({"natsClient": {"auth": {"user": "herald"}}}, "user and natsClient.auth.password go together"),
        ({"mode": "standalone", "nats": {"enabled": True}}, "nats.enabled=true with mode=standalone"),
        ({"extraVolumes": [{"name": "config", "emptyDir": {}}]}, 'extraVolumes[0].name "config" is a volume of the chart\'s own'),
        ({"extraVolumeMounts": [{"name": "x", "mountPath": "/tmp/"}]}, "extraVolumeMounts[0].mountPath /tmp/ is where the chart mounts"),
        ({"config": {"tls_bind": "0.0.0.0:9601", "tls_cert": "/c", "tls_key": "/k"}}, "config.tls_bind uses port 9601"),
    ]
    for values, message in cases:
        with pytest.raises(helm.HelmRenderError) as e:
            render(chart, values)
        assert message in str(e.value), (values, str(e.value))


def test_schema_file_is_valid_json():
    from conftest import CHART as chart_dir

    json.loads((chart_dir / "values.schema.json").read_text())
