"""Kubelet's device reuse between one pod's containers (`spec/KUBELET-DEVICE-MANAGER.md`), pure.

Kubelet allocates `initContainers` then `containers`, in order. Devices of earlier
*non-restartable* init containers are reusable: a later container takes them first (without
asking the plugin's preference), then new ones. After an app container or a restartable init
container (a native sidecar, `restartPolicy: Always`) is allocated, its devices stop being
reusable: it keeps them for the pod's life. So a pod with init 1 and app 1 holds one device
(the app gets the init's), and init 2 with app 1 holds two.

HCS books a pod's distinct devices (`distinct_devices`) and proposes each container's devices
(`assign`) following the same rule, so where kubelet's choice is determined, it is HCS's. Where
kubelet picks among more reusable devices than a container needs, it picks in Go map order
(random); the device plugin then records what kubelet gave (hcs.nodeplan), never refuses it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

Phase = Literal["init", "sidecar", "app"]


@dataclass(frozen=True)
class Need:
    """One container's device count, in kubelet's allocation order."""

    name: str
    count: int
    phase: Phase


def distinct_devices(needs: Iterable[Need]) -> int:
    """How many distinct devices kubelet gives the pod: the pod's real holding."""
    reusable = total = 0
    for n in needs:
        taken = min(n.count, reusable)
        fresh = n.count - taken
        total += fresh
        reusable = reusable + fresh if n.phase == "init" else reusable - taken
    return total


def assign(needs: Sequence[Need], pool: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Each container's devices: reusable ones first (oldest first), then fresh ones from
    `pool` in order. `pool` holds exactly `distinct_devices(needs)` devices."""
    reusable: list[str] = []
    fresh = iter(pool)
    out: dict[str, tuple[str, ...]] = {}
    for n in needs:
        taken = reusable[: n.count]
        got = taken + [next(fresh) for _ in range(n.count - len(taken))]
        out[n.name] = tuple(got)
        if n.phase == "init":
            reusable += [d for d in got if d not in reusable]
        else:
            reusable = [d for d in reusable if d not in got]
    return out


def reusable_for(needs: Sequence[Need], given: Mapping[str, Sequence[str]], name: str) -> list[str]:
    """The devices kubelet offers container `name` from reuse, given what the containers before
    it were really given (`given`: container -> kubelet device IDs)."""
    reusable: list[str] = []
    for n in needs:
        if n.name == name:
            return reusable
        got = list(given.get(n.name, ()))
        if n.phase == "init":
            reusable += [d for d in got if d not in reusable]
        else:
            reusable = [d for d in reusable if d not in got]
    return reusable


def owners(needs: Sequence[Need], given: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """Device -> the container it is booked to: the app container or sidecar that keeps it,
    else the first init container that used it."""
    out: dict[str, str] = {}
    for n in sorted(needs, key=lambda n: n.phase == "init"):
        for d in given.get(n.name, ()):
            out.setdefault(d, n.name)
    return out
