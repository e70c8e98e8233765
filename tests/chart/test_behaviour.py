"""What an operator relies on: routing, shutdown timing, probes, node ids, NATS, secrets, autoscaling, TLS.

The options added for issue 18 (standalone mode, HTTPRoute, NetworkPolicy, admin Services, extra volumes, Herald's
own TLS, client events from the environment) have their own files: test_standalone.py, test_gateway_api.py,
test_network_policy.py, test_pods.py; the monitoring objects are in test_monitoring.py."""

from __future__ import annotations

import base64
import os
import subprocess
import tempfile
import tomllib
from pathlib import Path

import pytest

from conftest import RELEASE, REPO, SCENARIOS, scenario_values

GATEWAY = f"{RELEASE}-herald-gateway"
INGEST = f"{RELEASE}-herald-ingest"
ROLES = ("gateway", "ingest")

# Every key Herald accepts (docs/configuration.md; crates/config/src/lib.rs uses deny_unknown_fields).
TOP_LEVEL_KEYS = {
    "bind", "metrics_bind", "activity_timeout", "pong_timeout", "max_message_bytes", "outbox_capacity",
    "write_timeout", "header_timeout", "body_timeout", "max_connections_per_ip", "trusted_proxies",
    "tls_bind", "tls_cert", "tls_key",
    "drain_window", "shutdown_timeout", "webhook_hold_back_ms", "webhook_batch_ms",
    "webhook_batch_size", "webhook_timeout_ms", "webhook_retry_window_secs", "webhook_max_pending",
    "max_connections", "nats", "apps",
}
NATS_KEYS = {
    "servers", "user", "password", "token", "nkey_seed", "credentials_file", "tls_ca", "tls_cert", "tls_key",
    "tls_required", "subject_prefix", "state_bucket", "cache_bucket", "kv_replicas", "node_ttl", "webhook_stream",
    "webhook_dead_letter_stream", "webhook_ack_wait_secs",
}
APP_KEYS = {
    "id", "key", "secret", "enabled", "client_events", "subscription_count", "user_authentication_timeout",
    "max_connections", "max_presence_members", "max_presence_user_info_bytes", "max_event_payload_bytes",
    "max_channels_per_event", "max_batch_events", "max_client_events_per_second", "webhooks",
}
WEBHOOK_KEYS = {"url", "events"}
WEBHOOK_EVENTS = {
    "channel_occupied", "channel_vacated", "member_added", "member_removed", "client_event", "cache_miss",
    "subscription_count",
}


def secret_data(r, name=f"{RELEASE}-herald"):
    found = [d for d in r.of_kind("Secret") if d["metadata"]["name"] == name]
    if not found:
        return {}
    return {k: base64.b64decode(v).decode() for k, v in found[0].get("data", {}).items()}


def config_toml(r) -> str | None:
    """config.toml as the pods see it (ConfigMap, or the chart's Secret with apps.source=config)."""
    volume = next(v for v in r.pod(r.roles[0])["volumes"] if v["name"] == "config")
    if "configMap" in volume:
        return r.one("ConfigMap", volume["configMap"]["name"])["data"]["config.toml"]
    data = secret_data(r, volume["secret"]["secretName"])
    return data.get(volume["secret"]["items"][0]["key"])


# --------------------------------------------------------------------------------------------------------------
# Ingress


@pytest.mark.parametrize("scenario", ["external-nats", "tls", "existing-secret"])
def test_ingress_routes_app_to_gateways_and_apps_to_ingests(rendered, scenario):
    r = rendered[scenario]
    ingress = r.one("Ingress")
    rules = ingress["spec"]["rules"]
    assert len(rules) == 1, "one host"
    assert rules[0]["host"] == r.values["ingress"]["host"]
    paths = {p["path"]: p for p in rules[0]["http"]["paths"]}
    assert paths.keys() == {"/app", "/apps"}
    assert paths["/app"]["pathType"] == "Prefix" and paths["/apps"]["pathType"] == "Prefix"
    assert paths["/app"]["backend"]["service"]["name"] == GATEWAY
    assert paths["/apps"]["backend"]["service"]["name"] == INGEST
    # the backends' ports exist on those Services
    for path, service_name in (("/app", GATEWAY), ("/apps", INGEST)):
        port = paths[path]["backend"]["service"]["port"]
        service_ports = r.one("Service", service_name)["spec"]["ports"]
        assert any(p["name"] == port.get("name") or p["port"] == port.get("number") for p in service_ports), port


def test_ingress_tls_and_websocket_timeouts(rendered):
    ingress = rendered["tls"].one("Ingress")
    assert ingress["spec"]["tls"] == [{"hosts": ["herald.example.org"], "secretName": "herald-example-org-tls"}]
    # idle WebSockets must outlive ingress-nginx's 60 s default read timeout (pusher-js pings after 120 s)
    annotations = ingress["metadata"]["annotations"]
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) > 120
    assert "tls" not in rendered["external-nats"].one("Ingress")["spec"]


def test_no_ingress_by_default(rendered):
    assert rendered["defaults"].of_kind("Ingress") == []


# --------------------------------------------------------------------------------------------------------------
# Shutdown, drain, probes, node id


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_gateway_grace_period_outlasts_drain_window_and_shutdown_timeout(rendered, scenario):
    """Gateways and the standalone pod drain; their grace period covers preStop + drain + shutdown_timeout."""
    r = rendered[scenario]
    role = "standalone" if r.standalone else "gateway"
    env = r.env(role)
    drain = int(env["HERALD_DRAIN_WINDOW"]["value"])
    assert drain == r.merged[role]["drainWindow"]
    shutdown_timeout = tomllib.loads(config_toml(r))["shutdown_timeout"]
    pod = r.pod(role)
    pre_stop = 0
    lifecycle = pod["containers"][0].get("lifecycle")
    if lifecycle:
        command = lifecycle["preStop"]["exec"]["command"]
        assert command[0] == "sleep"
        pre_stop = int(command[1])
    assert pre_stop == r.merged[role]["preStopSleepSeconds"]
    grace = pod["terminationGracePeriodSeconds"]
    assert grace > pre_stop + drain + shutdown_timeout, (grace, pre_stop, drain, shutdown_timeout)
    if r.standalone:
        return
    # the ingest has no drain window; its grace period still covers its preStop sleep
    ingest_pod = r.pod("ingest")
    assert ingest_pod["terminationGracePeriodSeconds"] > r.merged["ingest"]["preStopSleepSeconds"]
    assert "HERALD_DRAIN_WINDOW" not in r.env("ingest")


def test_a_grace_period_shorter_than_the_drain_is_refused(chart):
    from conftest import render
    import helm_python as helm

    with pytest.raises(helm.HelmRenderError, match="must be larger than 40 s"):
        render(chart, {"gateway": {"terminationGracePeriodSeconds": 40}})
    ok = render(chart, {"gateway": {"terminationGracePeriodSeconds": 41}})
    assert ok.deployment("gateway")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 41
    # standalone: 0 preStop + 10 drain + 5 shutdown_timeout
    with pytest.raises(helm.HelmRenderError, match=r"standalone.terminationGracePeriodSeconds \(15\) must be larger than 15 s \(standalone.preStopSleepSeconds"):
        render(chart, {"mode": "standalone", "standalone": {"drainWindow": 10, "terminationGracePeriodSeconds": 15}})
    ok = render(chart, {"mode": "standalone", "standalone": {"drainWindow": 10}})
    assert ok.pod("standalone")["terminationGracePeriodSeconds"] == 30


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_probes_liveness_healthz_readiness_readyz_on_the_admin_port(rendered, scenario):
    r = rendered[scenario]
    for role in r.roles:
        container = r.container(role)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        expected = {"http": 6001, "metrics": 9601}
        if "tls_bind" in r.merged["config"]:
            expected["https"] = int(r.merged["config"]["tls_bind"].rsplit(":", 1)[1])
        assert ports == expected
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        env = r.env(role)
        assert env["HERALD_METRICS_BIND"]["value"] == "0.0.0.0:9601"
        assert env["HERALD_BIND"]["value"] == "0.0.0.0:6001"
        assert container["args"] == [role]


@pytest.mark.parametrize("role", ROLES)
def test_node_id_is_the_pod_name(rendered, role):
    env = rendered["defaults"].env(role)
    assert env["HERALD_NODE_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_rolling_update_surges_before_draining(rendered):
    for role in ROLES:
        strategy = rendered["defaults"].deployment(role)["spec"]["strategy"]
        assert strategy["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}


def test_pods_run_as_non_root_read_only(rendered):
    for role in ROLES:
        r = rendered["defaults"]
        pod = r.deployment(role)["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert r.container(role)["securityContext"]["readOnlyRootFilesystem"] is True
        assert pod["automountServiceAccountToken"] is False


# --------------------------------------------------------------------------------------------------------------
# config.toml, NATS, secrets


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_config_toml_parses_and_has_only_keys_herald_knows(rendered, scenario):
    r = rendered[scenario]
    text = config_toml(r)
    config = tomllib.loads(text)
    assert set(config) <= TOP_LEVEL_KEYS, set(config) - TOP_LEVEL_KEYS
    assert set(config.get("nats", {})) <= NATS_KEYS
    for app in config.get("apps", []):
        assert set(app) <= APP_KEYS
        assert isinstance(app["id"], str) and isinstance(app["key"], str) and app["secret"]
        for hook in app.get("webhooks", []):
            assert set(hook) <= WEBHOOK_KEYS and hook["url"].startswith(("http://", "https://")), hook
            assert set(hook.get("events", [])) <= WEBHOOK_EVENTS, hook
    # set by HERALD_* variables, not the file
    assert not {"bind", "metrics_bind", "drain_window"} & set(config)
    if r.standalone:
        assert "nats" not in config, "herald standalone uses no NATS"
    else:
        assert "servers" not in config["nats"]
    for key, value in r.merged["config"].items():
        assert config[key] == value, key


def test_nats_servers_external_list_and_dependency(rendered):
    env = rendered["external-nats"].env("gateway")
    assert env["HERALD_NATS"]["value"] == ",".join(rendered["external-nats"].values["natsClient"]["servers"])
    nats = tomllib.loads(config_toml(rendered["external-nats"]))["nats"]
    assert nats == {
        "subject_prefix": "herald-prod",
        "state_bucket": "herald-prod-state",
        "cache_bucket": "herald-prod-cache",
        "kv_replicas": 3,
        "node_ttl": 3,
        "webhook_stream": "herald-webhooks",
        "webhook_dead_letter_stream": "herald-webhooks-dead",
        "webhook_ack_wait_secs": 30,
        "tls_required": False,
    }
    # the NATS dependency: its service, and R3 buckets on its 3-server cluster
    dep = rendered["nats-dependency"]
    for role in ROLES:
        assert dep.env(role)["HERALD_NATS"]["value"] == f"nats://{RELEASE}-nats:4222"
    assert tomllib.loads(config_toml(dep))["nats"]["kv_replicas"] == 3
    assert tomllib.loads(config_toml(rendered["defaults"]))["nats"]["kv_replicas"] == 1


def test_nats_user_password_come_from_the_charts_secret(rendered):
    r = rendered["external-nats"]
    secret = secret_data(r)
    env = r.env("ingest")
    for var, key, value in (("HERALD_NATS_USER", "nats-user", "herald"), ("HERALD_NATS_PASSWORD", "nats-password", "s3cret-nats-password")):
        assert env[var]["valueFrom"]["secretKeyRef"] == {"name": f"{RELEASE}-herald", "key": key}
        assert secret[key] == value
    assert "HERALD_NATS_TOKEN" not in env
    # no secret value in a ConfigMap or a plain env value
    for cm in r.of_kind("ConfigMap"):
        assert "s3cret-nats-password" not in str(cm["data"])


def test_single_app_from_env_with_the_secret_from_a_secret(rendered):
    r = rendered["external-nats"]
    for role in ROLES:
        env = r.env(role)
        assert env["PUSHER_APP_ID"]["value"] == "1001"
        assert env["PUSHER_APP_KEY"]["value"] == "prod-key"
        assert env["PUSHER_APP_SECRET"]["valueFrom"]["secretKeyRef"] == {"name": f"{RELEASE}-herald", "key": "PUSHER_APP_SECRET"}
    assert secret_data(r)["PUSHER_APP_SECRET"] == "prod-secret"
    assert "apps" not in tomllib.loads(config_toml(r)), "with apps.source=env the file has no [[apps]]"


def test_default_app_secret_is_generated(rendered):
    secret = secret_data(rendered["defaults"])["PUSHER_APP_SECRET"]
    assert len(secret) == 40 and secret.isalnum()


def test_existing_secret_for_the_app_and_nats(rendered):
    r = rendered["existing-secret"]
    for role in ROLES:
        env = r.env(role)
        assert env["PUSHER_APP_SECRET"]["valueFrom"]["secretKeyRef"] == {"name": "herald-app", "key": "pusher-secret"}
        for var, key in (("HERALD_NATS_USER", "user"), ("HERALD_NATS_PASSWORD", "password"), ("HERALD_NATS_TOKEN", "token"), ("HERALD_NATS_NKEY_SEED", "nkey_seed")):
            assert env[var]["valueFrom"]["secretKeyRef"] == {"name": "herald-nats-auth", "key": key, "optional": True}
    # nothing secret left for the chart to store
    assert r.of_kind("Secret") == []


def test_whole_config_toml_in_a_secret_for_several_apps(rendered):
    r = rendered["config-secret"]
    assert r.of_kind("ConfigMap") == [d for d in r.of_kind("ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]
    config = tomllib.loads(secret_data(r)["config.toml"])
    assert [a["id"] for a in config["apps"]] == ["1", "admin"]
    shop, admin = config["apps"]
    assert shop == {"id": "1", "key": "shop-key", "secret": "shop-secret", "client_events": True, "subscription_count": True, "max_connections": 20000}
    assert admin["user_authentication_timeout"] == 30
    assert config["activity_timeout"] == 60
    for role in ROLES:
        env = r.env(role)
        assert not {"PUSHER_APP_ID", "PUSHER_APP_KEY", "PUSHER_APP_SECRET"} & env.keys()
        volume = next(v for v in r.deployment(role)["spec"]["template"]["spec"]["volumes"] if v["name"] == "config")
        assert volume["secret"]["secretName"] == f"{RELEASE}-herald"


def test_config_change_rolls_the_pods(chart):
    from conftest import render

    def checksum(values):
        return render(chart, values).deployment("gateway")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    assert checksum({}) == checksum({})
    assert checksum({}) != checksum({"config": {"activity_timeout": 60}})
    assert checksum({}) != checksum({"apps": {"list": [{"id": "app-id", "key": "app-key", "secret": "rotated"}]}})


# --------------------------------------------------------------------------------------------------------------
# Webhooks


def test_webhooks_render_as_toml_inline_tables(rendered):
    r = rendered["webhooks"]
    text = config_toml(r)
    config = tomllib.loads(text)
    # every app's receivers come through intact (an app without webhooks gets no key)
    apps = {a["id"]: a for a in config["apps"]}
    assert list(apps) == [str(a["id"]) for a in r.values["apps"]["list"]]
    for listed in r.values["apps"]["list"]:
        assert apps[str(listed["id"])].get("webhooks") == listed.get("webhooks"), apps[str(listed["id"])]
    assert "webhooks" not in apps["plain"]
    # an array of inline tables on one line, keys sorted, strings escaped as TOML basic strings (no JSON objects)
    [shop_line] = [line for line in text.splitlines() if line.startswith("webhooks = ") and "shop.example" in line]
    assert shop_line == (
        'webhooks = [{ events = ["member_added", "member_removed"], url = "https://shop.example/pusher/webhook" }, '
        '{ url = "https://audit.example/pusher?source=herald\\u0026tag=\\u003cprod\\u003e" }]'
    )
    assert '":' not in text, "a JSON object in config.toml"
    # the delivery settings and the NATS streams
    for key, value in r.values["config"].items():
        assert config[key] == value, key
    assert {k: v for k, v in config["nats"].items() if k.startswith("webhook_")} == {
        "webhook_stream": "shop-webhooks",
        "webhook_dead_letter_stream": "shop-webhooks-dead",
        "webhook_ack_wait_secs": 60,
    }
    # receiver URLs (they may carry tokens) live in the Secret with the rest of config.toml
    for cm in r.of_kind("ConfigMap"):
        assert "shop.example" not in str(cm.get("data"))


def test_webhook_defaults_in_nats(rendered):
    nats = tomllib.loads(config_toml(rendered["defaults"]))["nats"]
    assert nats["webhook_stream"] == "herald-webhooks"
    assert nats["webhook_dead_letter_stream"] == "herald-webhooks-dead"
    assert nats["webhook_ack_wait_secs"] == 30
    assert not any(k.startswith("webhook_") for k in tomllib.loads(config_toml(rendered["defaults"])))


def test_webhooks_need_apps_source_config(chart):
    from conftest import render
    import helm_python as helm

    app = {"id": "1", "key": "k", "secret": "s", "webhooks": [{"url": "https://shop.example/hook", "events": ["member_added"]}]}
    with pytest.raises(helm.HelmRenderError) as rendering:
        render(chart, {"apps": {"source": "env", "list": [app]}})
    message = str(rendering.value)
    assert "apps.list[0].webhooks: with apps.source=env" in message, message
    assert "set apps.source=config" in message, message
    # the same app with source=config renders, webhooks included
    ok = render(chart, {"apps": {"source": "config", "list": [app]}})
    assert tomllib.loads(config_toml(ok))["apps"][0]["webhooks"] == app["webhooks"]


# --------------------------------------------------------------------------------------------------------------
# TLS to NATS


def test_nats_tls_mounts_the_secret_and_passes_the_paths(rendered):
    r = rendered["tls"]
    for role in ROLES:
        env = r.env(role)
        assert env["HERALD_NATS"]["value"] == "tls://nats.messaging.svc:4222"
        assert env["HERALD_NATS_TLS_CA"]["value"] == "/etc/herald/nats-tls/ca.crt"
        assert env["HERALD_NATS_TLS_CERT"]["value"] == "/etc/herald/nats-tls/tls.crt"
        assert env["HERALD_NATS_TLS_KEY"]["value"] == "/etc/herald/nats-tls/tls.key"
        assert env["HERALD_NATS_CREDENTIALS_FILE"]["value"] == "/etc/herald/nats-creds/herald.creds"
        pod = r.deployment(role)["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
        assert volumes["nats-tls"]["secret"]["secretName"] == "herald-nats-client-tls"
        assert mounts["nats-tls"] == {"name": "nats-tls", "mountPath": "/etc/herald/nats-tls", "readOnly": True}
        assert volumes["nats-creds"]["secret"] == {"secretName": "herald-nats-creds", "items": [{"key": "herald.creds", "path": "herald.creds"}]}
        assert mounts["nats-creds"]["readOnly"] is True
    assert tomllib.loads(config_toml(r))["nats"]["tls_required"] is True
    assert "HERALD_NATS_TLS_CA" not in rendered["defaults"].env("gateway")


# --------------------------------------------------------------------------------------------------------------
# Autoscaling and disruption budgets


def test_hpa_cpu_and_connections_per_pod(rendered):
    r = rendered["external-nats"]
    hpa = r.one("HorizontalPodAutoscaler", GATEWAY)
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": GATEWAY}
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert metrics["Resource"]["resource"]["name"] == "cpu"
    assert metrics["Pods"]["pods"] == {"metric": {"name": "herald_connections"}, "target": {"type": "AverageValue", "averageValue": "20000"}}
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300
    ingest = r.one("HorizontalPodAutoscaler", INGEST)
    assert [m["type"] for m in ingest["spec"]["metrics"]] == ["Resource"]
    # with an HPA the Deployment leaves replicas to it
    for role in ROLES:
        assert "replicas" not in r.deployment(role)["spec"]
        assert r.deployment(role)["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"]
    # the connections metric is optional
    assert [m["type"] for m in rendered["defaults"].one("HorizontalPodAutoscaler", GATEWAY)["spec"]["metrics"]] == ["Resource"]


def test_autoscaling_off(rendered):
    r = rendered["autoscaling-off"]
    assert r.of_kind("HorizontalPodAutoscaler") == []
    assert r.deployment("gateway")["spec"]["replicas"] == 3
    assert r.deployment("ingest")["spec"]["replicas"] == 2
    pdb = r.one("PodDisruptionBudget", GATEWAY)
    assert pdb["spec"]["minAvailable"] == 2 and "maxUnavailable" not in pdb["spec"]
    assert "lifecycle" not in r.container("gateway")
    # 0 preStop + 20 drain + 10 shutdown_timeout
    assert r.deployment("gateway")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > 30


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_pdbs_select_each_role(rendered, scenario):
    r = rendered[scenario]
    if r.standalone:
        assert r.of_kind("PodDisruptionBudget") == [] and r.of_kind("HorizontalPodAutoscaler") == []
        return
    for role, name in (("gateway", GATEWAY), ("ingest", INGEST)):
        pdb = r.one("PodDisruptionBudget", name)
        assert pdb["spec"]["selector"]["matchLabels"].items() <= r.deployment(role)["spec"]["template"]["metadata"]["labels"].items()


# --------------------------------------------------------------------------------------------------------------
# The rendered configuration, run through the real binary


def herald_binary() -> Path | None:
    for candidate in (os.environ.get("HERALD_BIN"), REPO / "target/debug/herald", REPO / "target/release/herald"):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A throw-away certificate and key (openssl) for a config with tls_bind."""
    cert, key = directory / "tls.crt", directory / "tls.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


def run_herald(binary: Path, r, role: str, config: str) -> tuple[int | None, str, str]:
    """Start the real binary as `role` with `config` and the pod's environment (secrets resolved from the chart's
    Secret, NATS pointed at a closed port) for at most a second: (exit code or None if still running, stderr, stdout).
    With tls_bind, the listener moves to 127.0.0.1:0 and the certificate paths to a throw-away certificate."""
    secrets = secret_data(r)
    with tempfile.TemporaryDirectory() as tmp:
        config_path = Path(tmp, "config.toml")
        parsed = tomllib.loads(config)
        if "tls_bind" in parsed:
            cert, key = self_signed_certificate(Path(tmp))
            config = (
                config.replace(f'tls_bind = "{parsed["tls_bind"]}"', 'tls_bind = "127.0.0.1:0"')
                .replace(f'tls_cert = "{parsed["tls_cert"]}"', f'tls_cert = "{cert}"')
                .replace(f'tls_key = "{parsed["tls_key"]}"', f'tls_key = "{key}"')
            )
            assert str(cert) in config and str(key) in config and "127.0.0.1:0" in config, config
        config_path.write_text(config)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "NO_COLOR": "1"}
        for name, var in r.env(role).items():
            if "value" in var:
                env[name] = var["value"]
            elif "secretKeyRef" in var.get("valueFrom", {}):
                ref = var["valueFrom"]["secretKeyRef"]
                env[name] = secrets.get(ref["key"], "from-an-existing-secret")
            elif "fieldRef" in var.get("valueFrom", {}):
                env[name] = f"{GATEWAY}-5d9c7b-x2x4q"
        env.update(
            HERALD_CONFIG=str(config_path),
            HERALD_BIND="127.0.0.1:0",
            HERALD_METRICS_BIND="127.0.0.1:0",
            HERALD_NATS="nats://127.0.0.1:1",
        )
        proc = subprocess.Popen([str(binary), role], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            code = proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            proc.kill()
            out, err = proc.communicate()
    return code, err, out


def scenario_roles(scenario: str) -> list[str]:
    return ["standalone"] if scenario_values(scenario).get("mode") == "standalone" else list(ROLES)


@pytest.mark.parametrize(
    ("scenario", "role"),
    [(s, role) for s in SCENARIOS if s != "existing-secret" for role in scenario_roles(s)],
)
def test_herald_accepts_the_rendered_config_and_environment(rendered, scenario, role):
    """Start the real binary with the pod's config.toml and environment: an invalid configuration exits with 2 at
    once, a valid one gets as far as NATS."""
    binary = herald_binary()
    if binary is None:
        pytest.skip("no herald binary (target/debug/herald or HERALD_BIN)")
    r = rendered[scenario]
    config = config_toml(r)
    code, err, out = run_herald(binary, r, role, config)
    assert code != 2, f"herald {role} refused the rendered configuration:\n{err}\n{out}\n--- config.toml ---\n{config}"
    assert "invalid config" not in err, err


@pytest.mark.parametrize(
    ("good", "bad", "key"),
    [
        ('url = "https://shop.example/', 'url = "ftp://shop.example/', "apps[0].webhooks[0].url"),
        ('"member_removed"]', '"member_gone"]', "apps[0].webhooks[0].events"),
    ],
)
def test_herald_reads_the_rendered_webhooks(rendered, good, bad, key):
    """The binary really reads the webhooks the chart renders (the acceptance test is not vacuous for them): the
    same file with one receiver broken is refused, naming it."""
    binary = herald_binary()
    if binary is None:
        pytest.skip("no herald binary (target/debug/herald or HERALD_BIN)")
    r = rendered["webhooks"]
    config = config_toml(r)
    assert config.count(good) == 1, good
    code, err, _ = run_herald(binary, r, "ingest", config.replace(good, bad))
    assert code == 2, err
    assert f"`{key}`" in err, err
