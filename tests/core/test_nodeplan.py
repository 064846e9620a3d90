"""The device plugin's rules without gRPC or an API server (hcs.nodeplan, hcs.reuse): kubelet's
reuse of init containers' devices, realignment to the devices kubelet offers, certain
identification, and what is recorded."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from hcs.nodeplan import (
    AllocateError,
    Books,
    Decision,
    NodeDevice,
    Repeat,
    decide_allocate,
    prefer,
    reconcile,
)
from hcs.reuse import Need, assign, distinct_devices, reusable_for

GPU = "nvidia.com/gpu"
DEVICES = tuple(NodeDevice(str(i), True, 0 if i < 4 else 1) for i in range(8))


def pod(
    name: str,
    containers: list[tuple[str, int]],
    *,
    init: list[tuple[str, int, bool]] | None = None,
    annotations: dict[str, str] | None = None,
    admitted: bool = False,
) -> dict[str, Any]:
    def spec(n: str, k: int, restart: bool = False) -> dict[str, Any]:
        c: dict[str, Any] = {"name": n, "image": "i", "resources": {"limits": {GPU: str(k)}}}
        if restart:
            c["restartPolicy"] = "Always"
        return c

    out: dict[str, Any] = {
        "metadata": {"name": name, "namespace": "ml", "uid": f"u-{name}"},
        "spec": {"nodeName": "n", "containers": [spec(n, k) for n, k in containers]},
        "status": {"phase": "Running" if admitted else "Pending"},
    }
    if init:
        out["spec"]["initContainers"] = [spec(n, k, r) for n, k, r in init]
    if annotations:
        out["metadata"]["annotations"] = annotations
    if admitted:
        out["status"]["containerStatuses"] = [{"name": n} for n, _ in containers]
    return out


def books(*pods: dict[str, Any]) -> Books:
    return Books(tuple(pods), DEVICES)


def decide(b: Books, ids: list[str]) -> Decision | Repeat:
    return decide_allocate(b, GPU, ids, node="n", vendor="nvidia")


def test_reuse_follows_kubelet() -> None:
    init1 = [Need("i", 1, "init"), Need("a", 1, "app")]
    assert distinct_devices(init1) == 1
    assert assign(init1, ["3"]) == {"i": ("3",), "a": ("3",)}
    init2 = [Need("i", 2, "init"), Need("a", 1, "app")]
    assert distinct_devices(init2) == 2
    assert assign(init2, ["3", "5"]) == {"i": ("3", "5"), "a": ("3",)}
    sidecar = [Need("s", 1, "sidecar"), Need("a", 1, "app")]
    assert distinct_devices(sidecar) == 2 and assign(sidecar, ["0", "1"])["a"] == ("1",)
    # what kubelet offers an app container from reuse: the init's devices, less a sidecar's
    needs = [Need("i", 2, "init"), Need("s", 1, "sidecar"), Need("a", 1, "app")]
    assert reusable_for(needs, {"i": ["0", "1"], "s": ["1"]}, "a") == ["0"]


def test_the_app_container_may_take_its_init_containers_device() -> None:
    annotations = {"devices.hcs.io/i": "3", "devices.hcs.io/a": "3", "hcs.io/assigned-devices": "3"}
    p = pod("p", [("a", 1)], init=[("i", 1, False)], annotations=annotations)
    first = decide(books(p), ["3"])
    assert isinstance(first, Decision) and first.want.container == "i" and not first.release
    p["metadata"]["annotations"] = {**annotations, **first.annotations}
    second = decide(books(p), ["3"])
    assert isinstance(second, Decision) and second.want.container == "a"
    assert second.release and not second.moved


def test_kubelet_reusing_the_other_init_device_moves_the_books() -> None:
    """init 2, app 1: kubelet gives the app either init device (Go map order)."""
    annotations = {
        "devices.hcs.io/i": "3,5",
        "devices.hcs.io/a": "3",
        "hcs.io/assigned-devices": "3,5",
        "hcs.io/allocated": orjson.dumps({"i": ["3", "5"]}).decode(),
    }
    p = pod("p", [("a", 1)], init=[("i", 2, False)], annotations=annotations)
    d = decide(books(p), ["5"])
    assert isinstance(d, Decision) and d.moved and d.release
    assert d.annotations["devices.hcs.io/a"] == "5"
    assert d.annotations["hcs.io/assigned-devices"] == "3,5"  # the pod still holds both


def test_topology_alignment_realigns_to_free_devices_only() -> None:
    hcs = pod(
        "p", [("m", 2)], annotations={"devices.hcs.io/m": "0,1", "hcs.io/assigned-devices": "0,1"}
    )
    other = pod(
        "q",
        [("m", 1)],
        annotations={"devices.hcs.io/m": "6", "hcs.io/assigned-devices": "6"},
        admitted=True,
    )
    b = books(hcs, other)
    d = decide(b, ["4", "7"])  # kubelet aligned the pod to NUMA 1
    assert isinstance(d, Decision) and d.moved and d.devices == ("4", "7")
    assert d.annotations["devices.hcs.io/m"] == "4,7"
    assert d.annotations["hcs.io/assigned-devices"] == "4,7"
    with pytest.raises(AllocateError, match="device 6 is held by ml/q"):
        decide(b, ["4", "6"])


def test_the_preference_stays_with_hcs_where_kubelet_offers_it_and_aligns_otherwise() -> None:
    hcs = pod("p", [("m", 2)], annotations={"devices.hcs.io/m": "0,1"})
    other = pod("q", [("m", 1)], annotations={"devices.hcs.io/m": "5"}, admitted=True)
    b = books(hcs, other)
    assert prefer(b, GPU, [str(i) for i in range(8)], [], 2) == ["0", "1"]
    # Offer restricted to NUMA 1 with 4 already chosen: stay on NUMA 1, skip q's device 5.
    assert prefer(b, GPU, ["4", "5", "6", "7"], ["4"], 2) == ["4", "6"]
    assert prefer(b, GPU, ["5"], [], 1) is None  # no container of that size: not certain


def test_a_repeat_is_answered_only_for_a_positively_identified_container() -> None:
    """A pending container whose HCS devices are the requested ones is the one kubelet
    admits, even when another pod's record names the same kubelet IDs."""
    recorded = pod(
        "b",
        [("b", 1)],
        annotations={"devices.hcs.io/b": "1", "hcs.io/allocated": '{"b":["1::0"]}'},
        admitted=True,
    )
    pending = pod("a", [("a", 1)], annotations={"devices.hcs.io/a": "1"})
    d = decide(books(recorded, pending), ["1::0"])
    assert isinstance(d, Decision) and d.want.container == "a"
    again = decide(books(recorded), ["1::0"])  # nothing pending of that size: a repeat
    assert isinstance(again, Repeat) and again.container == "b"


def test_ambiguity_and_unknown_devices_are_refused() -> None:
    stray1, stray2 = pod("s1", [("m", 1)]), pod("s2", [("m", 1)])
    with pytest.raises(AllocateError, match="several pods could be"):
        decide(books(stray1, stray2), ["2"])
    with pytest.raises(AllocateError, match="unknown devices"):
        decide(books(stray1), ["9"])
    with pytest.raises(AllocateError, match="no pending pod asks for 2"):
        decide(books(stray1), ["2", "3"])


def test_reconcile_writes_what_kubelet_gave_and_releases_the_lock() -> None:
    p = pod("p", [("m", 2)], annotations={"devices.hcs.io/m": "0,1"}, admitted=True)
    fixed = reconcile(books(p), GPU, {("ml", "p"): {"m": ["2", "3"]}}, node="n", vendor="nvidia")
    (d,) = fixed
    assert d.annotations["devices.hcs.io/m"] == "2,3" and d.release and d.moved
    p["metadata"]["annotations"] |= d.annotations
    assert reconcile(books(p), GPU, {("ml", "p"): {"m": ["2", "3"]}}, node="n", vendor="x") == []
