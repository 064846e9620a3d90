"""The optional monitoring component: its Services reach the metrics ports the workloads
declare, and every series the Grafana dashboard charts is one HCS exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cluster.controllers import ControllerMetrics
from extender.app import create_app as extender_app
from hcs.admission import AdmissionContext
from hcs.engine import EngineConfig
from hcs.quota import QuotaBook
from hcs.scheduling import SchedulerService
from hcs.state import ClusterState
from hcs.synthetic import make_node
from node.agent import AgentMetrics
from serving import REGISTRY
from tests.manifests.test_workloads import objects
from webhook.app import create_app as webhook_app

COMPONENT = Path(__file__).resolve().parents[2] / "manifests" / "components" / "monitoring"


SERIES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}


def exported_names() -> set[str]:
    state = ClusterState.from_nodes([make_node("g")])
    registries = [
        extender_app(SchedulerService(state, EngineConfig()))[REGISTRY],
        webhook_app(AdmissionContext(state, QuotaBook()))[REGISTRY],
        ControllerMetrics().registry,
        AgentMetrics().registry,
    ]
    names: set[str] = set()
    for registry in registries:
        text = generate_latest(registry).decode()
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
    """Every HCS workload is scraped: each Service selects pod templates (a Deployment, or the
    four vendors' agent DaemonSets) that declare the port and pass --metrics-port with it."""
    services = [
        d for d in yaml.safe_load_all((COMPONENT / "metrics-services.yaml").read_text()) if d
    ]
    monitor = yaml.safe_load((COMPONENT / "servicemonitor.yaml").read_text())
    templates = [
        (d["metadata"]["name"], d["spec"]["template"])
        for d in objects("Deployment") + objects("DaemonSet")
    ]
    covered = set()
    for service in services:
        labels = service["metadata"]["labels"]
        assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
        (port,) = service["spec"]["ports"]
        assert port["name"] == monitor["spec"]["endpoints"][0]["port"]
        selector = service["spec"]["selector"].items()
        selected = [(n, t) for n, t in templates if selector <= t["metadata"]["labels"].items()]
        assert selected, f"{service['metadata']['name']} selects no pods"
        for name, template in selected:
            covered.add(name)
            containers = template["spec"]["containers"]
            declared = {
                p["name"]: p["containerPort"] for c in containers for p in c.get("ports", [])
            }
            assert declared[port["targetPort"]] == port["port"], name
            args = [c["args"] for c in containers if c.get("image") == "hcs"]
            assert any(
                a[a.index("--metrics-port") + 1] == str(port["port"])
                for a in args
                if "--metrics-port" in a
            ), name
    assert covered == {n for n, _ in templates}
