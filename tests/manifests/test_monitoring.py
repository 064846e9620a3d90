"""The optional monitoring component: its Services reach the metrics ports the workloads
declare, and every series the Grafana dashboard charts is one HCS exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from extender.app import create_app as extender_app
from hcs.admission import AdmissionContext
from hcs.engine import EngineConfig
from hcs.quota import QuotaBook
from hcs.scheduling import SchedulerService
from hcs.state import ClusterState
from hcs.synthetic import make_node
from serving import REGISTRY
from tests.manifests.test_workloads import pod_specs
from webhook.app import create_app as webhook_app

COMPONENT = Path(__file__).resolve().parents[2] / "manifests" / "components" / "monitoring"


SERIES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}


def exported_names() -> set[str]:
    state = ClusterState.from_nodes([make_node("g")])
    apps = [
        extender_app(SchedulerService(state, EngineConfig())),
        webhook_app(AdmissionContext(state, QuotaBook())),
    ]
    names: set[str] = set()
    for app in apps:
        text = generate_latest(app[REGISTRY]).decode()
        for family in text_string_to_metric_families(text):
            # a labelled family with no children yet prints no samples: name its series
            suffixes = SERIES.get(family.type, ("",))
            names |= {family.name + suffix for suffix in suffixes}
    return names


def test_every_dashboard_series_is_exported() -> None:
    dashboard = json.loads((COMPONENT / "hcs-dashboard.json").read_text())
    exported = exported_names()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            used = set(re.findall(r"\bhcs_[a-z0-9_]+", target["expr"]))
            assert used and used <= exported, (panel["title"], used - exported)
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


def test_the_services_select_pods_that_declare_the_metrics_port() -> None:
    services = [
        d for d in yaml.safe_load_all((COMPONENT / "metrics-services.yaml").read_text()) if d
    ]
    monitor = yaml.safe_load((COMPONENT / "servicemonitor.yaml").read_text())
    specs: dict[str, dict[str, Any]] = dict(pod_specs())
    assert len(services) == 2
    for service in services:
        labels = service["metadata"]["labels"]
        assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
        (port,) = service["spec"]["ports"]
        assert port["name"] == monitor["spec"]["endpoints"][0]["port"]
        workload = service["spec"]["selector"]["app.kubernetes.io/name"]  # Deployment name
        declared = {
            p["name"]: p["containerPort"]
            for c in specs[workload]["containers"]
            for p in c.get("ports", [])
        }
        assert declared[port["targetPort"]] == port["port"]
        args = [c["args"] for c in specs[workload]["containers"] if c.get("image") == "hcs"]
        assert any(
            a[a.index("--metrics-port") + 1] == str(port["port"])
            for a in args
            if "--metrics-port" in a
        )
