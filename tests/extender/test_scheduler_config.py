"""The shipped kube-scheduler configuration matches what the extender serves and PROTOCOLS §A1."""

from pathlib import Path
from typing import Any

import yaml

from extender.app import VERBS
from hcs.demand import ABSTRACT_RESOURCES
from hcs.vendors import VendorTable, managed_resources
from hcs_cli.main import build_parser

CONFIG = (
    Path(__file__).resolve().parents[2] / "manifests" / "scheduler" / "kube-scheduler-config.yaml"
)


def config() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(CONFIG.read_text())
    return data


def test_the_configuration_is_a_kube_scheduler_configuration() -> None:
    data = config()
    assert data["apiVersion"] == "kubescheduler.config.k8s.io/v1"
    assert data["kind"] == "KubeSchedulerConfiguration"
    assert data["percentageOfNodesToScore"] == 100
    assert data["leaderElection"]["leaderElect"] is True
    assert [p["schedulerName"] for p in data["profiles"]] == ["hcs-scheduler"]


def test_the_extender_entry_matches_the_server() -> None:
    (ext,) = config()["extenders"]
    verbs = [ext["filterVerb"], ext["prioritizeVerb"], ext["bindVerb"], ext["preemptVerb"]]
    assert verbs == list(VERBS)
    assert ext["nodeCacheCapable"] is True
    assert ext["weight"] >= 12
    assert ext["ignorable"] is False
    default_port = build_parser().parse_args(["extender", "--inventory", "x"]).port
    assert ext["urlPrefix"] == f"http://127.0.0.1:{default_port}"


def test_managed_resources_cover_abstract_and_vendor_resources() -> None:
    (ext,) = config()["extenders"]
    managed = {m["name"]: m["ignoredByScheduler"] for m in ext["managedResources"]}
    for resource in ABSTRACT_RESOURCES:
        assert managed[resource] is True, resource
    for profile in VendorTable().profiles.values():
        assert managed[profile.resource] is False, profile.resource


def test_managed_resources_are_exactly_the_vendor_tables_names() -> None:
    """A pod asking only for an alias (huawei.com/Ascend910B3, hygon.com/dcunum, …) must reach
    the extender: kube-scheduler's IsInterested looks at managedResources only."""
    (ext,) = config()["extenders"]
    listed = [m["name"] for m in ext["managedResources"] if not m["name"].startswith("ai.compute/")]
    assert listed == managed_resources(VendorTable())
    assert {"huawei.com/Ascend910B3", "huawei.com/Ascend310P", "hygon.com/dcunum"} <= set(listed)
    assert "cambricon.com/vmlu" in listed
    assert all(m["ignoredByScheduler"] is False for m in ext["managedResources"][4:])
