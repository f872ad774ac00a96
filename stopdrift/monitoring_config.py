"""Prometheus configuration for a run: the committed ``monitoring/prometheus.yml`` with other
worker targets and Alertmanager address (the demo and the tests use free ports), written where
the caller wants it. Rule files are written as absolute paths to the repository's rules, so the
rendered file works from any directory.

>>> import tempfile, yaml
>>> out = Path(tempfile.mkdtemp()) / "prometheus.yml"
>>> cfg = yaml.safe_load(render_prometheus_config(["127.0.0.1:8123"], "127.0.0.1:9193", out)
...                      .read_text())
>>> cfg["scrape_configs"][0]["static_configs"][0]["targets"]
['127.0.0.1:8123']
>>> cfg["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
['127.0.0.1:9193']
>>> Path(cfg["rule_files"][0]).is_file()
True
"""

from __future__ import annotations

from pathlib import Path

import yaml

from stopdrift_common.errors import UserError
from stopdrift_common.settings import PROJECT_ROOT

MONITORING_DIR = PROJECT_ROOT / "monitoring"
PROMETHEUS_TEMPLATE = MONITORING_DIR / "prometheus.yml"
ALERTMANAGER_CONFIG = MONITORING_DIR / "alertmanager.yml"
WORKER_JOB = "stopdrift-worker"


def render_prometheus_config(
    worker_targets: list[str],
    alertmanager: str | None,
    out_path: Path,
    scrape_interval: str | None = None,
) -> Path:
    """Write a Prometheus config scraping ``worker_targets`` ("host:port") as job
    ``stopdrift-worker`` and alerting to ``alertmanager`` ("host:port", or None for none)."""
    if not worker_targets:
        raise UserError("no worker metrics target given: pass at least one host:port")
    for target in [*worker_targets, *([alertmanager] if alertmanager else [])]:
        host, _, port = target.rpartition(":")
        if not host or not port.isdigit():
            raise UserError(f"{target!r} is not host:port (e.g. 127.0.0.1:8000)")
    config = yaml.safe_load(PROMETHEUS_TEMPLATE.read_text())
    config["rule_files"] = [
        str((PROMETHEUS_TEMPLATE.parent / rule).resolve()) for rule in config["rule_files"]
    ]
    for job in config["scrape_configs"]:
        if job["job_name"] == WORKER_JOB:
            job["static_configs"] = [{"targets": list(worker_targets)}]
    if alertmanager:
        config["alerting"]["alertmanagers"] = [{"static_configs": [{"targets": [alertmanager]}]}]
    else:
        config.pop("alerting", None)
    if scrape_interval:
        config["global"]["scrape_interval"] = scrape_interval
        config["global"]["evaluation_interval"] = scrape_interval
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(yaml.safe_dump(config, sort_keys=False))
    return out_path
