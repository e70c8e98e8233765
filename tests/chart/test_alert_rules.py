"""`promtool test rules` over deploy/prometheus/alerts.test.yml: each alert fires on the series it is about,
grouped by namespace, and stays quiet otherwise (no-ready-gateway counts gateways only; open fds above 80 %;
JetStream KV unhealthy for 1 minute; any webhook queue failure)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from conftest import REPO


def test_alert_rules_pass_their_promtool_unit_tests():
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("HERALD_REQUIRE_PROMTOOL"):
            pytest.fail("promtool is not installed (scripts/test-chart unpacks it from Debian's prometheus package)")
        pytest.skip("promtool is not installed")
    tests = REPO / "deploy" / "prometheus" / "alerts.test.yml"
    result = subprocess.run([promtool, "test", "rules", str(tests)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr
