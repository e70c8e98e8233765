"""httpRoute: a Gateway API HTTPRoute with the Ingress's routes, and timeouts that do not cut WebSockets."""

from __future__ import annotations

import helm_python as helm
import pytest

from conftest import RELEASE, render

GATEWAY = f"{RELEASE}-herald-gateway"
INGEST = f"{RELEASE}-herald-ingest"


def routes(route):
    """path prefix -> (backendRefs, timeouts) of each rule."""
    out = {}
    for rule in route["spec"]["rules"]:
        [match] = rule["matches"]
        assert match["path"]["type"] == "PathPrefix"
        out[match["path"]["value"]] = (rule["backendRefs"], rule.get("timeouts"))
    return out


def test_app_goes_to_the_gateways_and_apps_to_the_ingests(rendered):
    r = rendered["gateway-api"]
    route = r.one("HTTPRoute", f"{RELEASE}-herald")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["spec"]["parentRefs"] == r.values["httpRoute"]["parentRefs"]
    assert route["spec"]["hostnames"] == ["ws.example.com", "realtime.example.com"]
    assert route["metadata"]["labels"]["team"] == "realtime"
    assert route["metadata"]["annotations"] == {"example.com/owner": "realtime"}
    by_path = routes(route)
    assert by_path.keys() == {"/app", "/apps"}
    assert by_path["/app"][0] == [{"name": GATEWAY, "port": 6001}]
    assert by_path["/apps"][0] == [{"name": INGEST, "port": 6001}]
    # each backend is a Service of the chart with that port, serving the client port of the right pods
    for path, role in (("/app", "gateway"), ("/apps", "ingest")):
        [ref] = by_path[path][0]
        service = r.one("Service", ref["name"])
        [port] = [p for p in service["spec"]["ports"] if p["port"] == ref["port"]]
        assert port["targetPort"] == "http"
        assert service["spec"]["selector"]["app.kubernetes.io/component"] == role


def test_websockets_have_no_request_timeout(rendered):
    """A WebSocket is one HTTP request for the connection's whole life: the /app rule disables both timeouts
    ("0s" = no timeout in Gateway API); the HTTP API keeps the implementation's default."""
    by_path = routes(rendered["gateway-api"].one("HTTPRoute"))
    assert by_path["/app"][1] == {"request": "0s", "backendRequest": "0s"}
    assert by_path["/apps"][1] is None


def test_timeouts_can_be_set_or_left_out(chart):
    base = {"httpRoute": {"enabled": True, "parentRefs": [{"name": "gw"}]}}
    custom = render(chart, {"httpRoute": {**base["httpRoute"], "timeouts": {"request": "2h", "backendRequest": "1h"}}})
    assert routes(custom.one("HTTPRoute"))["/app"][1] == {"request": "2h", "backendRequest": "1h"}
    # for implementations without HTTPRouteRequestTimeout, or Gateway API older than v1.2: null removes the default
    omitted = render(chart, {"httpRoute": {**base["httpRoute"], "timeouts": None}})
    assert "timeouts" not in omitted.one("HTTPRoute")["spec"]["rules"][0]
    # no hostnames: the listener's
    assert "hostnames" not in omitted.one("HTTPRoute")["spec"]


def test_no_httproute_by_default_and_a_parent_is_required(chart, rendered):
    assert rendered["defaults"].of_kind("HTTPRoute") == []
    with pytest.raises(helm.HelmValuesError, match="/httpRoute/parentRefs"):
        render(chart, {"httpRoute": {"enabled": True}})


def test_httproute_follows_the_service_ports(chart):
    r = render(
        chart,
        {
            "httpRoute": {"enabled": True, "parentRefs": [{"name": "gw"}]},
            "gateway": {"service": {"port": 80}},
            "ingest": {"service": {"port": 8080}},
        },
    )
    by_path = routes(r.one("HTTPRoute"))
    assert by_path["/app"][0] == [{"name": GATEWAY, "port": 80}]
    assert by_path["/apps"][0] == [{"name": INGEST, "port": 8080}]
