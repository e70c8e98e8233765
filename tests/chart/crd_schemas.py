"""JSON Schemas of the custom resources the chart renders, which kubernetes-validate has no schema for.

kubernetes-validate ships the OpenAPI schemas of Kubernetes' own APIs only. These are written for these tests: each
object lists the fields of the upstream CRD that the chart may render, with the upstream types, enums, patterns and
limits, and `additionalProperties: false` everywhere, so a misspelt or misplaced field fails (the API server would
prune it silently or refuse it). They were checked field by field against:

- HTTPRoute `gateway.networking.k8s.io/v1`: the standard-channel CRD of Gateway API v1.2 (the first release with
  `rules[].timeouts` in the standard channel) to v1.6;
- ServiceMonitor, PodMonitor and PrometheusRule `monitoring.coreos.com/v1`: the CRDs of prometheus-operator v0.93.

`metadata` (and nothing else) is checked against Kubernetes' own ObjectMeta of the version under test. The CEL rules
(`x-kubernetes-validations`) of the Gateway API CRD that concern rendered fields are checked in Python by
`cel_rules_httproute`, since JSON Schema cannot express them.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import importlib_resources
import jsonschema
import referencing
import referencing.jsonschema
from kubernetes_validate.utils import all_versions, major_minor

K8S_DEFS = "https://kubernetes.io/api/_definitions.json"


def _k8s(name: str) -> dict[str, Any]:
    return {"$ref": f"{K8S_DEFS}#/$defs/{name}"}


OBJECT_META = _k8s("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta")
STRING = {"type": "string"}
STRING_MAP = {"type": "object", "additionalProperties": STRING}
DNS_SUBDOMAIN = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
PORT_NUMBER = {"type": "integer", "minimum": 1, "maximum": 65535}
# Prometheus Operator's Duration
PROM_DURATION = {
    "type": "string",
    "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}
# Gateway API Duration (GEP-2257)
GATEWAY_DURATION = {"type": "string", "pattern": "^([0-9]{1,5}(h|m|s|ms)){1,4}$"}


def _obj(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = required
    return schema


def _resource(api_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **_obj(
            {
                "apiVersion": {"const": api_version},
                "kind": {"const": kind},
                "metadata": OBJECT_META,
                "spec": spec,
            },
            ["apiVersion", "kind", "metadata", "spec"],
        ),
    }


# --------------------------------------------------------------------------------------------------------------
# Gateway API

PARENT_REFERENCE = _obj(
    {
        "group": {"type": "string", "maxLength": 253, "pattern": "^$|" + DNS_SUBDOMAIN},
        "kind": {"type": "string", "minLength": 1, "maxLength": 63, "pattern": "^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$"},
        "name": {"type": "string", "minLength": 1, "maxLength": 253},
        "namespace": {"type": "string", "minLength": 1, "maxLength": 63, "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "sectionName": {"type": "string", "minLength": 1, "maxLength": 253, "pattern": DNS_SUBDOMAIN},
        "port": PORT_NUMBER,
    },
    ["name"],
)
HTTP_BACKEND_REF = _obj(
    {
        "group": {"type": "string", "maxLength": 253, "pattern": "^$|" + DNS_SUBDOMAIN},
        "kind": {"type": "string", "minLength": 1, "maxLength": 63, "pattern": "^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$"},
        "name": {"type": "string", "minLength": 1, "maxLength": 253},
        "namespace": {"type": "string", "minLength": 1, "maxLength": 63, "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "port": PORT_NUMBER,
        "weight": {"type": "integer", "minimum": 0, "maximum": 1000000},
    },
    ["name"],
)
HTTP_ROUTE_MATCH = _obj(
    {
        "path": _obj(
            {
                "type": {"enum": ["Exact", "PathPrefix", "RegularExpression"]},
                "value": {"type": "string", "maxLength": 1024},
            }
        ),
    }
)
HTTP_ROUTE = _resource(
    "gateway.networking.k8s.io/v1",
    "HTTPRoute",
    _obj(
        {
            "parentRefs": {"type": "array", "maxItems": 32, "items": PARENT_REFERENCE},
            "hostnames": {
                "type": "array",
                "maxItems": 16,
                "items": {"type": "string", "minLength": 1, "maxLength": 253, "pattern": "^(\\*\\.)?" + DNS_SUBDOMAIN[1:]},
            },
            "rules": {
                "type": "array",
                "minItems": 1,
                "maxItems": 16,
                "items": _obj(
                    {
                        "name": {"type": "string", "minLength": 1, "maxLength": 253, "pattern": DNS_SUBDOMAIN},
                        "matches": {"type": "array", "maxItems": 64, "items": HTTP_ROUTE_MATCH},
                        "backendRefs": {"type": "array", "maxItems": 16, "items": HTTP_BACKEND_REF},
                        "timeouts": _obj({"request": GATEWAY_DURATION, "backendRequest": GATEWAY_DURATION}),
                    }
                ),
            },
        }
    ),
)


def _duration_seconds(value: str) -> float:
    """A Gateway API duration in seconds."""
    import re

    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(int(n) * units[u] for n, u in re.findall(r"([0-9]+)(ms|h|m|s)", value))


def cel_rules_httproute(doc: dict[str, Any]) -> list[str]:
    """The CEL rules of the HTTPRoute CRD that apply to fields the chart renders; returns the broken ones."""
    import re

    problems = []
    rules = doc["spec"].get("rules", [])
    if sum(len(r.get("matches", [])) for r in rules) > 128:
        problems.append("spec.rules: more than 128 matches in all")
    for i, rule in enumerate(rules):
        timeouts = rule.get("timeouts", {})
        if "request" in timeouts and "backendRequest" in timeouts:
            request = _duration_seconds(timeouts["request"])
            if request != 0 and _duration_seconds(timeouts["backendRequest"]) > request:
                problems.append(f"spec.rules[{i}].timeouts: backendRequest timeout cannot be longer than request timeout")
        for j, match in enumerate(rule.get("matches", [])):
            path = match.get("path")
            if path and path.get("type", "PathPrefix") in ("Exact", "PathPrefix"):
                value = path.get("value", "/")
                if (
                    not value.startswith("/")
                    or any(bad in value for bad in ("//", "/./", "/../", "%2f", "%2F", "#"))
                    or value.endswith(("/..", "/."))
                    or not re.fullmatch(r"(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|%[0-9a-fA-F]{2})+", value)
                ):
                    problems.append(f"spec.rules[{i}].matches[{j}].path.value {value!r} is not a valid absolute path")
        for j, ref in enumerate(rule.get("backendRefs", [])):
            if ref.get("group", "") == "" and ref.get("kind", "Service") == "Service" and "port" not in ref:
                problems.append(f"spec.rules[{i}].backendRefs[{j}]: Must have port for Service reference")
    keys = [
        (p.get("group", "gateway.networking.k8s.io"), p.get("kind", "Gateway"), p.get("namespace", ""), p["name"], p.get("sectionName", ""))
        for p in doc["spec"].get("parentRefs", [])
    ]
    if len(keys) != len(set(keys)):
        problems.append("spec.parentRefs: sectionName must be unique when parentRefs includes 2 or more references to the same parent")
    return problems


# --------------------------------------------------------------------------------------------------------------
# Prometheus Operator

LABEL_SELECTOR = _obj(
    {
        "matchLabels": STRING_MAP,
        "matchExpressions": {
            "type": "array",
            "items": _obj({"key": STRING, "operator": STRING, "values": {"type": "array", "items": STRING}}, ["key", "operator"]),
        },
    }
)
NAMESPACE_SELECTOR = _obj({"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": STRING}})
RELABEL_CONFIG = _obj(
    {
        "action": {
            "enum": [
                "replace", "Replace", "keep", "Keep", "drop", "Drop", "hashmod", "HashMod", "labelmap", "LabelMap",
                "labeldrop", "LabelDrop", "labelkeep", "LabelKeep", "lowercase", "Lowercase", "uppercase", "Uppercase",
                "keepequal", "KeepEqual", "dropequal", "DropEqual",
            ]
        },
        "modulus": {"type": "integer", "minimum": 0},
        "regex": STRING,
        "replacement": STRING,
        "separator": STRING,
        "sourceLabels": {"type": "array", "items": STRING},
        "targetLabel": STRING,
    }
)
SCRAPE_ENDPOINT = {
    "port": STRING,
    "path": STRING,
    "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
    "interval": PROM_DURATION,
    "scrapeTimeout": PROM_DURATION,
    "honorLabels": {"type": "boolean"},
    "relabelings": {"type": "array", "items": RELABEL_CONFIG},
    "metricRelabelings": {"type": "array", "items": RELABEL_CONFIG},
}
SERVICE_MONITOR = _resource(
    "monitoring.coreos.com/v1",
    "ServiceMonitor",
    _obj(
        {
            "jobLabel": STRING,
            "targetLabels": {"type": "array", "items": STRING},
            "podTargetLabels": {"type": "array", "items": STRING},
            "selector": LABEL_SELECTOR,
            "namespaceSelector": NAMESPACE_SELECTOR,
            "endpoints": {"type": "array", "items": _obj(SCRAPE_ENDPOINT)},
        },
        ["endpoints", "selector"],
    ),
)
POD_MONITOR = _resource(
    "monitoring.coreos.com/v1",
    "PodMonitor",
    _obj(
        {
            "jobLabel": STRING,
            "podTargetLabels": {"type": "array", "items": STRING},
            "selector": LABEL_SELECTOR,
            "namespaceSelector": NAMESPACE_SELECTOR,
            "podMetricsEndpoints": {
                "type": "array",
                "items": _obj({**SCRAPE_ENDPOINT, "portNumber": PORT_NUMBER}),
            },
        },
        ["selector"],
    ),
)
PROMETHEUS_RULE = _resource(
    "monitoring.coreos.com/v1",
    "PrometheusRule",
    _obj(
        {
            "groups": {
                "type": "array",
                "items": _obj(
                    {
                        "name": {"type": "string", "minLength": 1},
                        "interval": PROM_DURATION,
                        "query_offset": PROM_DURATION,
                        "limit": {"type": "integer"},
                        "labels": STRING_MAP,
                        "partial_response_strategy": {"type": "string", "pattern": "^(?i)(abort|warn)?$"},
                        "rules": {
                            "type": "array",
                            "items": _obj(
                                {
                                    "alert": STRING,
                                    "record": STRING,
                                    "expr": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
                                    "for": PROM_DURATION,
                                    "keep_firing_for": {**PROM_DURATION, "minLength": 1},
                                    "labels": STRING_MAP,
                                    "annotations": STRING_MAP,
                                },
                                ["expr"],
                            ),
                        },
                    },
                    ["name"],
                ),
            }
        }
    ),
)

SCHEMAS = {
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): HTTP_ROUTE,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR,
    ("monitoring.coreos.com/v1", "PodMonitor"): POD_MONITOR,
    ("monitoring.coreos.com/v1", "PrometheusRule"): PROMETHEUS_RULE,
}
CEL_RULES = {("gateway.networking.k8s.io/v1", "HTTPRoute"): cel_rules_httproute}


@cache
def _k8s_definitions(kube_version: str) -> referencing.Resource:
    """kubernetes-validate's strict definitions of the newest schema set not newer than kube_version."""
    version = [v for v in all_versions() if major_minor(v) <= major_minor(kube_version)][-1]
    path = importlib_resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"v{version}-local-strict" / "_definitions.json"
    return referencing.Resource.from_contents(json.loads(path.read_text()))


def is_custom_resource(doc: dict[str, Any]) -> bool:
    return (doc["apiVersion"], doc["kind"]) in SCHEMAS


def validate_custom_resource(doc: dict[str, Any], kube_version: str) -> list[str]:
    """Problems of one custom resource ([] when valid): schema violations, then broken CEL rules."""
    key = (doc["apiVersion"], doc["kind"])
    schema = SCHEMAS[key]
    registry = referencing.Registry().with_resource(K8S_DEFS, _k8s_definitions(kube_version))
    validator = jsonschema.Draft202012Validator(schema, registry=registry)
    problems = [
        f"{'.'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    ]
    if not problems and key in CEL_RULES:
        problems = CEL_RULES[key](doc)
    return problems
