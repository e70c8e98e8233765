"""mode: standalone: one pod running `herald standalone`, no NATS, no gateway/ingest workloads."""

from __future__ import annotations

import tomllib

import helm_python as helm
import pytest

from conftest import RELEASE, render
from test_behaviour import config_toml

STANDALONE = f"{RELEASE}-herald-standalone"
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod")


@pytest.mark.parametrize("scenario", ["standalone", "standalone-webhooks"])
def test_one_workload_one_pod_no_nats(rendered, scenario):
    r = rendered[scenario]
    workloads = [d for d in r.docs if d["kind"] in WORKLOAD_KINDS]
    assert [(d["kind"], d["metadata"]["name"]) for d in workloads] == [("Deployment", STANDALONE)]
    spec = r.deployment("standalone")["spec"]
    assert spec["replicas"] == 1
    # stop the old pod before the new one starts: two standalone pods would be two servers with separate state
    assert spec["strategy"] == {"type": "Recreate"}
    container = r.container("standalone")
    assert container["args"] == ["standalone"]
    env = r.env("standalone")
    # no NATS anywhere: no servers, no node id, no NATS credentials or TLS, no [nats] table, no NATS volumes
    assert not [name for name in env if name.startswith("HERALD_NATS") or name == "HERALD_NODE_ID"], list(env)
    assert "nats" not in tomllib.loads(config_toml(r))
    volumes = {v["name"] for v in r.pod("standalone")["volumes"]}
    assert not volumes & {"nats-creds", "nats-tls"}
    assert not any("nats" in d["metadata"]["name"] for d in r.docs), [d["metadata"]["name"] for d in r.docs]
    # nothing of the cluster roles
    assert not any(d["metadata"]["name"].endswith(("-gateway", "-ingest", "-gateway-admin", "-ingest-admin")) for d in r.docs)
    assert r.of_kind("HorizontalPodAutoscaler") == [] and r.of_kind("PodDisruptionBudget") == []
    # WebSockets and the HTTP API on the one client port, the admin port apart
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": 6001, "metrics": 9601}
    assert env["HERALD_BIND"]["value"] == "0.0.0.0:6001"


def test_drain_window_and_grace_period(rendered, chart):
    r = rendered["standalone"]
    env = r.env("standalone")
    assert env["HERALD_DRAIN_WINDOW"]["value"] == "5"
    assert env["OTEL_SERVICE_NAME"]["value"] == "herald-shop"
    # default preStop 0 + drain 5 + shutdown_timeout 5 + 15
    assert r.pod("standalone")["terminationGracePeriodSeconds"] == 25
    assert "lifecycle" not in r.container("standalone")
    # the defaults: drain 0 (Herald's own default for standalone)
    defaults = render(chart, {"mode": "standalone"})
    assert defaults.env("standalone")["HERALD_DRAIN_WINDOW"]["value"] == "0"
    assert defaults.pod("standalone")["terminationGracePeriodSeconds"] == 20


def test_ingress_and_httproute_send_both_paths_to_the_one_service(rendered):
    r = rendered["standalone"]
    service = r.one("Service", STANDALONE)
    assert [p["name"] for p in service["spec"]["ports"]] == ["http"]
    paths = {p["path"]: p["backend"]["service"]["name"] for p in r.one("Ingress")["spec"]["rules"][0]["http"]["paths"]}
    assert paths == {"/app": STANDALONE, "/apps": STANDALONE}
    rules = r.one("HTTPRoute")["spec"]["rules"]
    routes = {rule["matches"][0]["path"]["value"]: rule["backendRefs"] for rule in rules}
    assert routes == {"/app": [{"name": STANDALONE, "port": 6001}], "/apps": [{"name": STANDALONE, "port": 6001}]}


def test_standalone_refuses_the_nats_dependency(chart):
    with pytest.raises(helm.HelmRenderError, match="nats.enabled=true with mode=standalone"):
        render(chart, {"mode": "standalone", "nats": {"enabled": True}})


def test_cluster_is_the_default_mode(rendered):
    r = rendered["defaults"]
    assert r.merged["mode"] == "cluster"
    assert sorted(d["metadata"]["name"] for d in r.of_kind("Deployment")) == [f"{RELEASE}-herald-gateway", f"{RELEASE}-herald-ingest"]
    assert r.of_kind("Deployment")[0]["spec"]["strategy"]["type"] == "RollingUpdate"


def test_standalone_client_events_and_webhooks(rendered):
    # env mode: client events through HERALD_CLIENT_EVENTS
    assert rendered["standalone"].env("standalone")["HERALD_CLIENT_EVENTS"] == {"name": "HERALD_CLIENT_EVENTS", "value": "true"}
    # config mode: the apps, webhooks included, in config.toml; standalone sends the webhooks itself
    r = rendered["standalone-webhooks"]
    config = tomllib.loads(config_toml(r))
    assert config["apps"][0]["client_events"] is True
    assert config["apps"][0]["webhooks"][0]["url"] == "https://shop.example/pusher/webhook"
    assert "HERALD_CLIENT_EVENTS" not in r.env("standalone")
