"""Prometheus, Alertmanager and Grafana files: valid for the real tools, rules unit-tested."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from stopdrift.monitoring_config import render_prometheus_config
from stopdrift_common.errors import UserError
from stopdrift_common.settings import PROJECT_ROOT

MONITORING = PROJECT_ROOT / "monitoring"
GRAFANA = MONITORING / "grafana"


def tool(name: str) -> str:
    path = shutil.which(name)
    # `make install` installs them: a missing tool is a broken setup, not a reason to skip.
    assert path, (
        f"{name} not installed: run `make install` (Debian prometheus, prometheus-alertmanager)"
    )
    return path


def run(*cmd: str, cwd: Path = MONITORING) -> str:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def load_dashboard_module():
    spec = importlib.util.spec_from_file_location("build_dashboard", GRAFANA / "build_dashboard.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_prometheus_config_is_valid():
    out = run(tool("promtool"), "check", "config", "prometheus.yml")
    assert "SUCCESS" in out


def test_rendered_config_points_at_the_given_ports_and_is_valid(tmp_path: Path):
    out = render_prometheus_config(
        ["127.0.0.1:18001", "127.0.0.1:18002"], "127.0.0.1:19093", tmp_path / "p" / "prom.yml"
    )
    cfg = yaml.safe_load(out.read_text())
    assert cfg["scrape_configs"][0]["job_name"] == "stopdrift-worker"
    assert cfg["scrape_configs"][0]["static_configs"][0]["targets"] == [
        "127.0.0.1:18001",
        "127.0.0.1:18002",
    ]
    run(tool("promtool"), "check", "config", str(out), cwd=tmp_path)
    with pytest.raises(UserError, match="host:port"):
        render_prometheus_config(["8000"], None, tmp_path / "bad.yml")


def test_rules_pass_their_promtool_unit_tests():
    promtool = tool("promtool")
    run(promtool, "check", "rules", "rules/stopdrift.rules.yml")
    out = run(promtool, "test", "rules", "tests/stopdrift_rules_test.yml")
    assert "SUCCESS" in out


def test_alertmanager_config_routes_and_inhibits():
    amtool = tool("amtool")
    run(amtool, "check-config", "alertmanager.yml")
    routes = [
        (["alertname=StopdriftWorkerDown", "severity=critical"], "oncall"),
        (["alertname=StopdriftFeatureDrift", "severity=warning", "category=drift"], "default"),
    ]
    for labels, receiver in routes:
        out = run(amtool, "config", "routes", "test", "--config.file=alertmanager.yml", *labels)
        assert out.strip().splitlines()[0] == receiver
    config = yaml.safe_load((MONITORING / "alertmanager.yml").read_text())
    inhibit = config["inhibit_rules"][0]
    assert inhibit["source_matchers"] == ['alertname="StopdriftWorkerDown"']
    assert "drift" in inhibit["target_matchers"][0]


def receivers(config: dict) -> dict[str, dict]:
    return {r["name"]: r for r in config["receivers"]}


def integrations(receiver: dict) -> dict[str, list]:
    return {k: v for k, v in receiver.items() if k.endswith("_configs") and v}


def test_no_receiver_posts_where_nobody_listens():
    """The demo's receivers have no endpoint (alerts stay visible in the API) rather than a dead
    one; a deployment's example routes critical alerts to a real endpoint, with the same routes
    and inhibitions, and both pass amtool."""
    amtool = tool("amtool")
    demo = yaml.safe_load((MONITORING / "alertmanager.yml").read_text())
    example_file = "alertmanager-oncall.example.yml"
    run(amtool, "check-config", example_file)
    example = yaml.safe_load((MONITORING / example_file).read_text())
    for name, receiver in receivers(demo).items():
        assert not integrations(receiver), f"the demo's {name} posts to {integrations(receiver)}"

    assert example["route"] == demo["route"] and example["inhibit_rules"] == demo["inhibit_rules"]
    assert receivers(example)["default"] == receivers(demo)["default"]
    out = run(
        amtool, "config", "routes", "test", f"--config.file={example_file}", "severity=critical"
    )
    assert out.strip().splitlines()[0] == "oncall"
    (webhook,) = integrations(receivers(example)["oncall"])["webhook_configs"]
    host = urlparse(webhook["url"]).hostname
    assert host and host not in ("127.0.0.1", "localhost", "::1"), webhook["url"]


def test_dashboard_json_is_the_builder_output_and_every_query_parses(tmp_path: Path):
    module = load_dashboard_module()
    committed = json.loads((GRAFANA / "dashboards" / "stopdrift.json").read_text())
    assert committed == module.build(), "run monitoring/grafana/build_dashboard.py and commit"
    titles = [p["title"] for p in committed["panels"]]
    for wanted in ["Throughput", "latency", "Dead-letter", "lag", "Drift evidence", "Prediction"]:
        assert any(wanted.lower() in t.lower() for t in titles), wanted
    # promtool parses each query when it is a recording rule
    queries = module.queries()
    rules = {
        "groups": [
            {"name": "q", "rules": [{"record": f"q_{i}", "expr": q} for i, q in enumerate(queries)]}
        ]
    }
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump(rules))
    run(tool("promtool"), "check", "rules", str(path), cwd=tmp_path)


def test_grafana_provisioning_matches_the_dashboard():
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "stopdrift.yml").read_text())
    uids = {d["uid"]: d["type"] for d in ds["datasources"]}
    assert uids == {"stopdrift-prometheus": "prometheus", "stopdrift-alertmanager": "alertmanager"}
    dash = json.loads((GRAFANA / "dashboards" / "stopdrift.json").read_text())
    used = {p["datasource"]["uid"] for p in dash["panels"]}
    assert used == {"stopdrift-prometheus"}
    provider = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "stopdrift.yml").read_text()
    )
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
