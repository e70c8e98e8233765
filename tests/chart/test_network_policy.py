"""networkPolicy: the admin port only from the monitoring namespace, the client port from anywhere (or the sources
given), egress to DNS, NATS and webhook receivers only.

The rendered NetworkPolicies are evaluated the way Kubernetes defines them (a pod selected by a policy of a type is
isolated for that direction; a connection is allowed when a rule of some policy selecting the pod matches both its
peer and its port), for concrete sources and destinations. Kubelet probes are not modelled: they come from the node,
which most CNIs do not filter (values.yaml and docs/deploy.md say so).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

import pytest

from conftest import NAMESPACE, RELEASE, render
from test_monitoring import selects

MONITORING = {"kubernetes.io/metadata.name": "monitoring"}


@dataclass
class Peer:
    """A pod (namespace labels and pod labels) or, with pod_labels None, an address outside the cluster."""

    ip: str
    namespace: str | None = None
    pod_labels: dict | None = None
    ports: dict = field(default_factory=dict)  # named container ports of that pod

    @property
    def namespace_labels(self):
        return {"kubernetes.io/metadata.name": self.namespace} if self.namespace else {}


PROMETHEUS = Peer("10.1.0.5", "monitoring", {"app.kubernetes.io/name": "prometheus"})
GRAFANA = Peer("10.1.0.6", "monitoring", {"app.kubernetes.io/name": "grafana"})
SOMEONE_IN_THE_CLUSTER = Peer("10.2.0.7", "shop", {"app": "storefront"})
A_POD_NEXT_DOOR = Peer("10.3.0.8", NAMESPACE, {"app": "other"})
INGRESS_CONTROLLER = Peer("10.4.0.9", "ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"})
THE_INTERNET = Peer("198.51.100.20")
KUBE_DNS = Peer("10.96.0.10", "kube-system", {"k8s-app": "kube-dns"})
EXTERNAL_NATS = Peer("10.5.0.4", "messaging", {"app.kubernetes.io/name": "nats"})
NATS_DEPENDENCY = Peer("10.3.0.4", NAMESPACE, {"app.kubernetes.io/name": "nats", "app.kubernetes.io/instance": RELEASE, "app.kubernetes.io/component": "nats"})
WEBHOOK_RECEIVER = Peer("198.51.100.20")
OTHER_SITE = Peer("192.0.2.50")


def peer_matches(peer: dict, policy_namespace: str, other: Peer) -> bool:
    if "ipBlock" in peer:
        address = ipaddress.ip_address(other.ip)
        block = ipaddress.ip_network(peer["ipBlock"]["cidr"])
        if address.version != block.version or address not in block:
            return False
        return not any(address in ipaddress.ip_network(e) for e in peer["ipBlock"].get("except", []) if ipaddress.ip_network(e).version == address.version)
    if other.pod_labels is None:
        return False
    if "namespaceSelector" in peer:
        in_namespace = selects(peer["namespaceSelector"], other.namespace_labels)
    else:
        in_namespace = other.namespace == policy_namespace
    return in_namespace and selects(peer.get("podSelector", {}), other.pod_labels)


def port_matches(rule_ports, port: int, protocol: str, named: dict) -> bool:
    if not rule_ports:
        return True
    for p in rule_ports:
        if p.get("protocol", "TCP") != protocol:
            continue
        wanted = p.get("port")
        if wanted is None or wanted == port or (isinstance(wanted, str) and named.get(wanted) == port):
            return True
        if isinstance(wanted, int) and "endPort" in p and wanted <= port <= p["endPort"]:
            return True
    return False


def pod_labels_and_ports(r, role):
    template = r.deployment(role)["spec"]["template"]
    ports = {p["name"]: p["containerPort"] for p in template["spec"]["containers"][0]["ports"]}
    return template["metadata"]["labels"], ports


def policies_for(r, role, direction):
    labels, _ = pod_labels_and_ports(r, role)
    return [
        p
        for p in r.of_kind("NetworkPolicy")
        if selects(p["spec"]["podSelector"], labels) and direction in p["spec"].get("policyTypes", ["Ingress"])
    ]


def ingress_allowed(r, role, source: Peer, port: int, protocol: str = "TCP") -> bool:
    policies = policies_for(r, role, "Ingress")
    if not policies:
        return True
    _, named = pod_labels_and_ports(r, role)
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            peers = rule.get("from")
            if port_matches(rule.get("ports"), port, protocol, named) and (
                not peers or any(peer_matches(p, policy["metadata"]["namespace"], source) for p in peers)
            ):
                return True
    return False


def egress_allowed(r, role, destination: Peer, port: int, protocol: str = "TCP") -> bool:
    policies = policies_for(r, role, "Egress")
    if not policies:
        return True
    for policy in policies:
        for rule in policy["spec"].get("egress", []):
            peers = rule.get("to")
            if port_matches(rule.get("ports"), port, protocol, destination.ports) and (
                not peers or any(peer_matches(p, policy["metadata"]["namespace"], destination) for p in peers)
            ):
                return True
    return False


# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def enabled(chart):
    """The defaults with networkPolicy.enabled, in both modes."""
    return {mode: render(chart, {"mode": mode, "networkPolicy": {"enabled": True}}) for mode in ("cluster", "standalone")}


def test_off_by_default(rendered):
    assert rendered["defaults"].of_kind("NetworkPolicy") == []


@pytest.mark.parametrize("mode", ["cluster", "standalone"])
def test_one_policy_per_role_for_both_directions(enabled, mode):
    r = enabled[mode]
    policies = r.of_kind("NetworkPolicy")
    assert sorted(p["metadata"]["name"] for p in policies) == sorted(f"{RELEASE}-herald-{role}" for role in r.roles)
    for role in r.roles:
        [policy] = policies_for(r, role, "Ingress")
        assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]


@pytest.mark.parametrize("mode", ["cluster", "standalone"])
def test_admin_port_only_from_the_monitoring_namespace(enabled, mode):
    r = enabled[mode]
    for role in r.roles:
        # the admin port: metrics, health, dead-letter list and replay, no authentication
        assert ingress_allowed(r, role, PROMETHEUS, 9601)
        assert ingress_allowed(r, role, GRAFANA, 9601)
        for outsider in (SOMEONE_IN_THE_CLUSTER, A_POD_NEXT_DOOR, INGRESS_CONTROLLER, THE_INTERNET):
            assert not ingress_allowed(r, role, outsider, 9601), (role, outsider)
        # the client port from anywhere
        for anyone in (PROMETHEUS, SOMEONE_IN_THE_CLUSTER, A_POD_NEXT_DOOR, INGRESS_CONTROLLER, THE_INTERNET):
            assert ingress_allowed(r, role, anyone, 6001), (role, anyone)
        # and nothing else
        assert not ingress_allowed(r, role, THE_INTERNET, 22)
        assert not ingress_allowed(r, role, PROMETHEUS, 22)
        # the admin rule as rendered: only the metrics port, only the monitoring namespace
        [policy] = policies_for(r, role, "Ingress")
        [admin_rule] = [rule for rule in policy["spec"]["ingress"] if {"port": "metrics", "protocol": "TCP"} in rule["ports"]]
        assert admin_rule == {"ports": [{"port": "metrics", "protocol": "TCP"}], "from": [{"namespaceSelector": {"matchLabels": MONITORING}}]}


def test_cluster_egress_dns_nats_and_webhooks(rendered, enabled, chart):
    r = enabled["cluster"]
    for role in ("gateway", "ingest"):
        assert egress_allowed(r, role, KUBE_DNS, 53, "UDP") and egress_allowed(r, role, KUBE_DNS, 53, "TCP")
        # an external NATS (natsClient.servers) on the client port, wherever it is
        assert egress_allowed(r, role, EXTERNAL_NATS, 4222)
        assert not egress_allowed(r, role, EXTERNAL_NATS, 8222)
        # nothing else: no webhooks possible with apps.source=env
        assert not egress_allowed(r, role, WEBHOOK_RECEIVER, 443)
        assert not egress_allowed(r, role, SOMEONE_IN_THE_CLUSTER, 80)
    # with webhook receivers the ingests reach them on 443; gateways never (they queue webhooks through NATS)
    hooks = rendered["webhooks"]
    assert hooks.of_kind("NetworkPolicy") == []
    with_policy = render(chart, {**hooks.values, "networkPolicy": {"enabled": True}})
    assert egress_allowed(with_policy, "ingest", WEBHOOK_RECEIVER, 443)
    assert egress_allowed(with_policy, "ingest", OTHER_SITE, 443), "cidrs [] = any address"
    assert not egress_allowed(with_policy, "ingest", WEBHOOK_RECEIVER, 80)
    assert not egress_allowed(with_policy, "gateway", WEBHOOK_RECEIVER, 443)


def test_standalone_egress_has_no_nats_and_sends_webhooks(rendered, enabled):
    r = enabled["standalone"]
    assert egress_allowed(r, "standalone", KUBE_DNS, 53, "UDP")
    assert not egress_allowed(r, "standalone", EXTERNAL_NATS, 4222), "standalone uses no NATS"
    assert not egress_allowed(r, "standalone", WEBHOOK_RECEIVER, 443), "no webhooks with apps.source=env"
    hooks = rendered["standalone-webhooks"]
    assert egress_allowed(hooks, "standalone", Peer("203.0.113.9"), 443)
    assert egress_allowed(hooks, "standalone", Peer("203.0.113.9"), 8443)
    assert egress_allowed(hooks, "standalone", Peer("2001:db8::1"), 443)
    assert not egress_allowed(hooks, "standalone", OTHER_SITE, 443), "only the receivers' ranges"
    assert not egress_allowed(hooks, "standalone", EXTERNAL_NATS, 4222)


def test_every_option(rendered):
    r = rendered["network-policy"]
    for role in ("gateway", "ingest"):
        # clients only through the Ingress controller
        assert ingress_allowed(r, role, INGRESS_CONTROLLER, 6001)
        assert not ingress_allowed(r, role, THE_INTERNET, 6001)
        assert not ingress_allowed(r, role, SOMEONE_IN_THE_CLUSTER, 6001)
        # the admin port: Prometheus in "observability", and the extra ipBlock
        assert ingress_allowed(r, role, Peer("10.1.0.5", "observability", {"app.kubernetes.io/name": "prometheus"}), 9601)
        assert not ingress_allowed(r, role, Peer("10.9.0.5", "observability", {"app.kubernetes.io/name": "grafana"}), 9601)
        assert not ingress_allowed(r, role, PROMETHEUS, 9601), "the default monitoring namespace is replaced"
        assert ingress_allowed(r, role, Peer("10.0.3.3"), 9601)
        # extraIngress: a debug pod next door on 6001
        assert ingress_allowed(r, role, Peer("10.3.0.9", NAMESPACE, {"app": "debug"}), 6001)
        # DNS only to kube-dns
        assert egress_allowed(r, role, KUBE_DNS, 53, "UDP")
        assert not egress_allowed(r, role, Peer("8.8.8.8"), 53, "UDP")
        # NATS only in "messaging"
        assert egress_allowed(r, role, EXTERNAL_NATS, 4222)
        assert not egress_allowed(r, role, Peer("10.6.0.1", "elsewhere", {"app.kubernetes.io/name": "nats"}), 4222)
        # the OpenTelemetry collector (egress.extra)
        assert egress_allowed(r, role, Peer("10.1.0.8", "observability", {"app": "otel-collector"}), 4318)
    # webhooks: the ingests, to the two ranges on 443
    assert egress_allowed(r, "ingest", Peer("198.51.100.77"), 443)
    assert egress_allowed(r, "ingest", Peer("203.0.113.7"), 443)
    assert not egress_allowed(r, "ingest", Peer("203.0.113.8"), 443)
    assert not egress_allowed(r, "gateway", Peer("198.51.100.77"), 443)


def test_nats_dependency_pods_are_reachable(rendered):
    r = rendered["nats-dependency-monitored"]
    for role in ("gateway", "ingest"):
        assert egress_allowed(r, role, NATS_DEPENDENCY, 4222)
        assert not egress_allowed(r, role, NATS_DEPENDENCY, 6222), "not the cluster port"
        assert not egress_allowed(r, role, EXTERNAL_NATS, 4222), "only the dependency's pods"


def test_tls_port_is_a_client_port(rendered):
    r = rendered["server-tls"]
    for role in ("gateway", "ingest"):
        assert ingress_allowed(r, role, THE_INTERNET, 6443)
        assert ingress_allowed(r, role, THE_INTERNET, 6001)
        assert not ingress_allowed(r, role, THE_INTERNET, 9601)


def test_egress_can_be_left_open(chart):
    r = render(chart, {"networkPolicy": {"enabled": True, "egress": {"enabled": False}}})
    for policy in r.of_kind("NetworkPolicy"):
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        assert "egress" not in policy["spec"]
    assert egress_allowed(r, "gateway", OTHER_SITE, 25)
    assert not ingress_allowed(r, "gateway", THE_INTERNET, 9601)


def test_the_evaluator_is_not_vacuous():
    """The model refuses what a policy does not allow, and allows what it does (ports by name, ipBlock except)."""
    policy = {
        "kind": "NetworkPolicy",
        "metadata": {"name": "p", "namespace": NAMESPACE},
        "spec": {
            "podSelector": {"matchLabels": {"a": "b"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"ports": [{"port": "web"}], "from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.9.0.0/16"]}}]}],
        },
    }

    class R:
        docs = [policy]

        def of_kind(self, kind):
            return [policy]

        def deployment(self, role):
            return {"spec": {"template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"ports": [{"name": "web", "containerPort": 80}]}]}}}}

    assert ingress_allowed(R(), "x", Peer("10.1.1.1"), 80)
    assert not ingress_allowed(R(), "x", Peer("10.9.1.1"), 80)
    assert not ingress_allowed(R(), "x", Peer("10.1.1.1"), 81)
    assert not ingress_allowed(R(), "x", Peer("11.1.1.1"), 80)
