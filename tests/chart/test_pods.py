"""What every Herald pod gets from the new values: extraVolumes, extraVolumeMounts, extraEnvFrom, Herald's own TLS
listener (config.tls_bind) with its certificate from a mounted Secret, and client events for the app from the
environment (HERALD_CLIENT_EVENTS)."""

from __future__ import annotations

import os
import re
import socket
import ssl
import subprocess
import tempfile
import time
import tomllib
from pathlib import Path

import pytest

from conftest import RELEASE, render, scenario_values
from test_behaviour import config_toml, herald_binary, secret_data, self_signed_certificate


@pytest.mark.parametrize("mode", ["cluster", "standalone"])
def test_extra_volumes_mounts_and_env_from_reach_every_pod(chart, mode):
    values = {**scenario_values("server-tls"), "mode": mode}
    r = render(chart, values)
    for role in r.roles:
        pod = r.pod(role)
        container = pod["containers"][0]
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        assert volumes["herald-tls"] == {"name": "herald-tls", "secret": {"secretName": "ws-example-com-tls"}}
        assert mounts["herald-tls"] == {"name": "herald-tls", "mountPath": "/etc/herald/tls", "readOnly": True}
        # the chart's own volumes stay
        assert {"config", "tmp"} <= volumes.keys() and {"config", "tmp"} <= mounts.keys()
        # every mount has its volume
        assert mounts.keys() <= volumes.keys()
        assert container["envFrom"] == [
            {"secretRef": {"name": "herald-otel"}},
            {"configMapRef": {"name": "herald-extra", "optional": True}, "prefix": "HERALD_EXTRA_"},
        ]
        # the certificate paths of config.toml are inside the mount
        config = tomllib.loads(config_toml(r))
        for key in ("tls_cert", "tls_key"):
            assert config[key].startswith(mounts["herald-tls"]["mountPath"] + "/"), config[key]


def test_no_extras_by_default(rendered):
    r = rendered["defaults"]
    for role in r.roles:
        assert "envFrom" not in r.container(role)
        assert {v["name"] for v in r.pod(role)["volumes"]} == {"config", "tmp"}


def test_herald_tls_listener_through_the_chart(rendered):
    """config.tls_bind: config.toml carries the keys, the container opens the port as "https", the public Services
    publish it (gateway.service.tlsPort 443, ingest.service.tlsPort 8443), the admin Services do not."""
    r = rendered["server-tls"]
    config = tomllib.loads(config_toml(r))
    assert (config["tls_bind"], config["tls_cert"], config["tls_key"]) == ("0.0.0.0:6443", "/etc/herald/tls/tls.crt", "/etc/herald/tls/tls.key")
    for role, service_port, app_protocol in (("gateway", 443, "kubernetes.io/wss"), ("ingest", 8443, "https")):
        ports = {p["name"]: p["containerPort"] for p in r.container(role)["ports"]}
        assert ports == {"http": 6001, "https": 6443, "metrics": 9601}
        service = r.one("Service", f"{RELEASE}-herald-{role}")
        assert service["spec"]["type"] == "LoadBalancer"
        https = {p["name"]: p for p in service["spec"]["ports"]}["https"]
        assert https == {"name": "https", "port": service_port, "targetPort": "https", "protocol": "TCP", "appProtocol": app_protocol}
        admin = r.one("Service", f"{RELEASE}-herald-{role}-admin")
        assert [p["name"] for p in admin["spec"]["ports"]] == ["metrics"]
    # without tls_bind: no https port anywhere
    for service in rendered["defaults"].of_kind("Service"):
        assert "https" not in [p["name"] for p in service["spec"]["ports"]]


def test_herald_serves_tls_with_the_rendered_configuration(chart):
    """The real binary, started as the standalone pod of the server-tls values with a throw-away certificate at the
    mounted paths' place, opens the TLS listener and presents that certificate."""
    binary = herald_binary()
    if binary is None:
        pytest.skip("no herald binary (target/debug/herald or HERALD_BIN)")
    r = render(chart, {**scenario_values("server-tls"), "mode": "standalone"})
    config = config_toml(r)
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = self_signed_certificate(Path(tmp))
        config = (
            config.replace('tls_bind = "0.0.0.0:6443"', 'tls_bind = "127.0.0.1:0"')
            .replace('"/etc/herald/tls/tls.crt"', f'"{cert}"')
            .replace('"/etc/herald/tls/tls.key"', f'"{key}"')
        )
        Path(tmp, "config.toml").write_text(config)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "NO_COLOR": "1"}
        secrets = secret_data(r)
        for name, var in r.env("standalone").items():
            if "value" in var:
                env[name] = var["value"]
            elif "secretKeyRef" in var.get("valueFrom", {}):
                env[name] = secrets[var["valueFrom"]["secretKeyRef"]["key"]]
        env.update(HERALD_CONFIG=str(Path(tmp, "config.toml")), HERALD_BIND="127.0.0.1:0", HERALD_METRICS_BIND="127.0.0.1:0")
        proc = subprocess.Popen([str(binary), "standalone"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            port = None
            deadline = time.monotonic() + 10
            lines = []
            while port is None and time.monotonic() < deadline:
                line = proc.stdout.readline()
                if not line:
                    break
                lines.append(line)
                found = re.search(r'"tls_bind":"127\.0\.0\.1:([0-9]+)"', line)
                if found:
                    port = int(found.group(1))
            assert port, "no TLS listener:\n" + "".join(lines)
            context = ssl.create_default_context(cafile=str(cert))
            context.check_hostname = False
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                with context.wrap_socket(raw, server_hostname="localhost") as tls:
                    presented = tls.getpeercert(binary_form=True)
            assert presented == ssl.PEM_cert_to_DER_cert(cert.read_text())
        finally:
            proc.kill()
            proc.communicate()


@pytest.mark.parametrize(("scenario", "roles"), [("client-events", ["gateway", "ingest"]), ("standalone", ["standalone"])])
def test_client_events_from_the_environment(rendered, scenario, roles):
    """apps.source=env with apps.list[0].client_events: true: HERALD_CLIENT_EVENTS=true in every pod, and still no
    [[apps]] in config.toml (Herald refuses the variable next to [[apps]] in the file)."""
    r = rendered[scenario]
    for role in roles:
        env = r.env(role)
        assert env["HERALD_CLIENT_EVENTS"] == {"name": "HERALD_CLIENT_EVENTS", "value": "true"}
        assert env["PUSHER_APP_ID"]["value"] == str(r.values["apps"]["list"][0]["id"])
    assert "apps" not in tomllib.loads(config_toml(r))


def test_no_client_events_variable_otherwise(rendered, chart):
    for scenario in ("defaults", "external-nats", "config-secret", "webhooks"):
        r = rendered[scenario]
        for role in r.roles:
            assert "HERALD_CLIENT_EVENTS" not in r.env(role), (scenario, role)
    off = render(chart, {"apps": {"list": [{"id": "a", "key": "k", "secret": "s", "client_events": False}]}})
    assert "HERALD_CLIENT_EVENTS" not in off.env("gateway")


def test_client_events_roll_the_pods(chart):
    def checksum(values):
        return render(chart, values).deployment("gateway")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    app = {"id": "a", "key": "k", "secret": "s"}
    assert checksum({"apps": {"list": [app]}}) != checksum({"apps": {"list": [{**app, "client_events": True}]}})
