"""The allocation ledger used by bind: assume -> confirm -> release.

kube-scheduler binds in goroutines of its own, so bind(A) may arrive after filter(B) and several
binds may race. Every write takes one lock and *re-checks the fit against the state as it is now*
(every allocation already made), so two pods can never be given the same exclusive device or more
of a shared device than it has. Each step is idempotent per pod UID: a retried bind of the same
pod to the same node returns the allocation it already has.

- assume: devices chosen and charged (bind is under way);
- confirm: the Binding was written, the allocation is durable (it is in the Pod's annotations);
- release: the pod ended or the bind failed; the charge is returned.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import numpy as np

from hcs.demand import PodDemand
from hcs.engine import EngineConfig, compile_request, make_allocation, score_percent, select_devices
from hcs.engine import evaluate as _evaluate
from hcs.errors import PlacementError
from hcs.state import Allocation, ClusterState

log = logging.getLogger("hcs.ledger")


class Ledger:
    def __init__(
        self,
        state: ClusterState,
        config: EngineConfig | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state = state
        self.config = config or EngineConfig()
        self._clock = clock
        self._lock = threading.RLock()

    @property
    def lock(self) -> threading.RLock:
        """Held by every ledger write; hold it to read the state consistently."""
        return self._lock

    def assume(self, demand: PodDemand, node: str) -> Allocation:
        """Choose and charge devices for `demand` on `node`.

        Raises PlacementError (code = the filter reason) when the pod no longer fits there, and
        AllocationConflict when the pod already holds devices on another node.
        """
        if not demand.uid:
            raise PlacementError(f"pod {demand.key}: has no UID; cannot record an allocation")
        with self._lock:
            existing = self.state.allocations.get(demand.uid)
            if existing is not None:
                if existing.node == node:
                    return existing
                raise PlacementError(
                    f"pod {demand.key} already holds devices on {existing.node}; "
                    f"refusing a second allocation on {node}"
                )
            now = self._clock()
            req = compile_request(demand)
            picks = select_devices(self.state, req, node, self.config, now)
            row = self.state.index[node]
            ev = _evaluate(self.state, req, np.array([row], np.intp), self.config, now)
            node_score = int(score_percent(self.state, req, ev, self.config)[0])
            alloc = make_allocation(self.state, req, node, picks, now=now, score_value=node_score)
            self.state.add_allocation(alloc)
            return alloc

    def confirm(self, uid: str) -> Allocation:
        with self._lock:
            alloc = self.state.allocations.get(uid)
            if alloc is None:
                raise PlacementError(f"no allocation for pod UID {uid} to confirm")
            if alloc.state != "confirmed":
                alloc = alloc.confirmed()
                self.state.replace_allocation(alloc)
            return alloc

    def release_assumed(self, alloc: Allocation) -> bool:
        """Return `alloc`'s devices only if it is still the pod's record and still assumed: a
        retried bind of the same pod may have confirmed it meanwhile."""
        with self._lock:
            current = self.state.allocations.get(alloc.uid)
            if current is None or current.state != "assumed":
                return False
            if current.created_at != alloc.created_at or current.node != alloc.node:
                return False
            self.state.remove_allocation(alloc.uid)
            return True

    def release(self, uid: str) -> Allocation | None:
        """Return a pod's devices; None if it held none (releasing twice is harmless)."""
        with self._lock:
            return self.state.remove_allocation(uid)

    def restore(self, alloc: Allocation, *, force: bool = False) -> None:
        """Record an allocation made earlier (read back from a Pod's annotations at start-up).

        The charges are checked against the devices: an allocation naming devices the node
        does not have, or not fitting beside those already restored, is refused. With `force`
        (the API server says the pod runs there) it is recorded anyway and the conflict logged.
        """
        with self._lock:
            existing = self.state.allocations.get(alloc.uid)
            if existing is not None:
                if existing.node == alloc.node and existing.device_ids == alloc.device_ids:
                    return
                raise PlacementError(
                    f"pod {alloc.namespace}/{alloc.name} is recorded on {existing.node} already"
                )
            try:
                self._check_restorable(alloc)
            except PlacementError as exc:
                if not force:
                    raise
                log.warning("recording an allocation that does not fit: %s", exc.message)
            self.state.add_allocation(alloc)

    def _check_restorable(self, alloc: Allocation) -> None:
        row = self.state.index.get(alloc.node)
        if row is None:
            return  # the ComputeNode is not (yet) known: keep the record, charge on arrival
        ids = self.state.device_ids[row]
        shared = bool(self.state.node_shared_mask[row])
        for charge in alloc.charges:
            if charge.device_id not in ids:
                raise PlacementError(
                    f"pod {alloc.namespace}/{alloc.name}: device "
                    f"{charge.device_id} is not on {alloc.node}"
                )
            slot = ids.index(charge.device_id)
            if not shared and self.state.dev_holders[row, slot] > 0:
                raise PlacementError(
                    f"pod {alloc.namespace}/{alloc.name}: device "
                    f"{charge.device_id} on {alloc.node} is held by another pod"
                )
            if charge.vram_mib > self.state.dev_vram_free_mib[row, slot]:
                raise PlacementError(
                    f"pod {alloc.namespace}/{alloc.name}: device "
                    f"{charge.device_id} on {alloc.node} lacks the VRAM"
                )

    def expire_assumed(self, max_age_s: float) -> list[Allocation]:
        """Release allocations assumed longer ago than `max_age_s` and never confirmed (a bind
        whose process died between choosing devices and writing the Binding)."""
        with self._lock:
            cutoff = self._clock() - max_age_s
            stale = [
                a
                for a in self.state.allocations.values()
                if a.state == "assumed" and a.created_at < cutoff
            ]
            for a in stale:
                self.state.remove_allocation(a.uid)
            return stale
