import random
import threading
from collections import defaultdict

import pytest

from hcs.demand import PodDemand, parse_pod
from hcs.errors import HcsError, PlacementError
from hcs.ledger import Ledger
from hcs.state import Allocation, ClusterState, DeviceCharge
from hcs.synthetic import make_node, random_cluster


def pod(uid: str, vram: str = "10Gi", devices: int = 1, legacy: bool = False) -> PodDemand:
    resources = (
        {"limits": {"nvidia.com/gpu": str(devices)}}
        if legacy
        else {"requests": {"ai.compute/vram": vram, "ai.compute/devices": str(devices)}}
    )
    return parse_pod(
        {
            "metadata": {"name": uid, "namespace": "ns", "uid": uid},
            "spec": {"containers": [{"name": "c", "resources": resources}]},
        }
    )


def assert_never_double_booked(state: ClusterState) -> None:
    """Per device: exclusive devices have at most one holder, shared devices never give out
    more VRAM or TFLOPS than they have, and the arrays agree with the allocation records."""
    charged: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for alloc in state.allocations.values():
        assert len(alloc.device_ids) == len(alloc.charges)  # distinct devices per pod
        for ch in alloc.charges:
            acc = charged[(alloc.node, ch.device_id)]
            acc[0] += ch.vram_mib
            acc[1] += ch.fp16_milli_tflops
            acc[2] += ch.fp32_milli_tflops
            acc[3] += 1
    for name, node in state.nodes.items():
        row = state.index[name]
        for slot, dev in enumerate(node.devices):
            vram, fp16, fp32, holders = charged.get((name, dev.id), [0, 0, 0, 0])
            assert state.dev_holders[row, slot] == holders
            if not node.shared:
                assert holders <= 1, (name, dev.id)
            assert vram <= dev.vram_allocatable_mib, (name, dev.id)
            assert fp16 <= dev.fp16_milli_tflops
            assert fp32 <= dev.fp32_milli_tflops
            # free = allocatable - max(reported in use, charged): the agent's figure already
            # includes HCS's pods (docs/engine.md)
            free = dev.vram_allocatable_mib - max(dev.vram_allocated_mib, vram)
            assert state.dev_vram_free_mib[row, slot] == free


def test_assume_is_idempotent_per_uid() -> None:
    state = ClusterState.from_nodes([make_node("a"), make_node("b")])
    ledger = Ledger(state)
    first = ledger.assume(pod("u1"), "a")
    assert ledger.assume(pod("u1"), "a") == first
    with pytest.raises(PlacementError, match="already holds devices on a"):
        ledger.assume(pod("u1"), "b")
    assert len(state.allocations) == 1


def test_confirm_and_release() -> None:
    state = ClusterState.from_nodes([make_node("a", n_devices=1)])
    ledger = Ledger(state)
    ledger.assume(pod("u1"), "a")
    assert ledger.confirm("u1").state == "confirmed"
    assert ledger.confirm("u1").state == "confirmed"
    with pytest.raises(PlacementError):
        ledger.assume(pod("u2"), "a")
    assert ledger.release("u1") is not None
    assert ledger.release("u1") is None  # twice is harmless
    assert ledger.assume(pod("u2"), "a").node == "a"
    with pytest.raises(PlacementError, match="no allocation"):
        ledger.confirm("ghost")


def test_an_allocation_that_no_longer_fits_is_rejected_and_charges_nothing() -> None:
    state = ClusterState.from_nodes([make_node("a", n_devices=2)])
    ledger = Ledger(state)
    ledger.assume(pod("u1", devices=2), "a")
    with pytest.raises(PlacementError) as info:
        ledger.assume(pod("u2"), "a")
    assert info.value.code == "InsufficientDevices"
    assert set(state.allocations) == {"u1"}
    assert_never_double_booked(state)


def test_a_pod_without_uid_is_refused() -> None:
    ledger = Ledger(ClusterState.from_nodes([make_node("a")]))
    with pytest.raises(PlacementError, match="has no UID"):
        ledger.assume(pod(""), "a")


def test_whole_device_requests_take_the_whole_shared_device() -> None:
    state = ClusterState.from_nodes([make_node("a", n_devices=1, shared=True)])
    ledger = Ledger(state)
    alloc = ledger.assume(pod("legacy", legacy=True), "a")
    assert alloc.charges[0].vram_mib == 80 * 1024
    with pytest.raises(PlacementError):
        ledger.assume(pod("small", vram="1Gi"), "a")


def test_restore_checks_devices_and_capacity() -> None:
    state = ClusterState.from_nodes([make_node("a", n_devices=2)])
    ledger = Ledger(state)

    def alloc(uid: str, device: str, vram: int = 1024) -> Allocation:
        return Allocation(
            uid, "ns", uid, "a", "nvidia", (DeviceCharge(device, "c", vram, 0, 0),), "confirmed"
        )

    ledger.restore(alloc("u1", "0"))
    ledger.restore(alloc("u1", "0"))  # same record again: fine
    with pytest.raises(PlacementError, match="held by another pod"):
        ledger.restore(alloc("u2", "0"))
    with pytest.raises(PlacementError, match="not on a"):
        ledger.restore(alloc("u3", "9"))
    with pytest.raises(PlacementError, match="lacks the VRAM"):
        ledger.restore(alloc("u4", "1", vram=10**9))
    assert set(state.allocations) == {"u1"}


def test_stale_assumptions_expire() -> None:
    clock = [1000.0]
    state = ClusterState.from_nodes([make_node("a")])
    ledger = Ledger(state, clock=lambda: clock[0])
    ledger.assume(pod("old"), "a")
    ledger.confirm(ledger.assume(pod("kept"), "a").uid)
    clock[0] += 120
    assert [a.uid for a in ledger.expire_assumed(60)] == ["old"]
    assert set(state.allocations) == {"kept"}


def test_interleaved_assume_confirm_release_from_many_threads_never_double_books() -> None:
    nodes = random_cluster(30, seed=2)
    state = ClusterState.from_nodes(nodes)
    ledger = Ledger(state)
    names = sorted(state.index)
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        mine: list[str] = []
        try:
            for i in range(150):
                op = rng.random()
                if op < 0.6:
                    uid = f"w{seed}-{i}"
                    demand = pod(
                        uid,
                        vram=f"{rng.choice((2, 8, 20, 40))}Gi",
                        devices=rng.choice((1, 1, 2, 4)),
                        legacy=rng.random() < 0.1,
                    )
                    try:
                        ledger.assume(demand, rng.choice(names))
                        mine.append(uid)
                    except HcsError:
                        pass
                elif op < 0.8 and mine:
                    ledger.confirm(rng.choice(mine))
                elif mine:
                    ledger.release(mine.pop(rng.randrange(len(mine))))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert state.allocations  # the test did book something
    assert_never_double_booked(state)
