"""What a pod holds, read from the API objects: the pure half of cluster mode.

Allocations are rebuilt from Pod annotations (`hcs.io/assigned-node`, `hcs.io/assigned-devices`,
`devices.hcs.io/<container>`), so the API server, not a process, is the record; a pod placed
without HCS is charged as the whole devices it must be holding. The watches (`cluster.sync`)
and the quota controller (`cluster.controllers`) both read pods through these functions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from hcs.assignment import container_devices
from hcs.demand import A_ASSIGNED_DEVICES, A_ASSIGNED_NODE, A_ASSIGNED_VENDOR, parse_pod
from hcs.errors import HcsError
from hcs.reuse import assign, owners
from hcs.state import Allocation, ClusterState, DeviceCharge
from hcs.vendors import VENDOR_NAMES, VendorTable

log = logging.getLogger("hcs.cluster")


def allocation_from_pod(
    pod: Mapping[str, Any], state: ClusterState, vendors: VendorTable | None = None
) -> Allocation | None:
    """The allocation a bound Pod records in its annotations, or None if it holds no devices.

    `hcs.io/assigned-devices` lists the devices in container order (bind writes them so), each
    container taking as many as it asked for. Raises HcsError for annotations that do not match
    the pod's own request.
    """
    meta = pod.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    devices_text = annotations.get(A_ASSIGNED_DEVICES)
    node = annotations.get(A_ASSIGNED_NODE) or (pod.get("spec") or {}).get("nodeName")
    if not devices_text or not node:
        return None
    demand = parse_pod(pod, vendors)
    if not demand.asks_for_compute:
        return None
    # Per container when bind (or the device plugin, after kubelet chose) wrote
    # devices.hcs.io/<container> (exact, also where two containers share a device, or an init
    # container handed its devices on); else the pod-wide list, split by kubelet's reuse rule.
    per_container = container_devices(annotations)
    ordered = demand.all_containers
    if all(len(per_container.get(c.name, ())) == c.devices for c in ordered):
        given = {c.name: tuple(per_container[c.name]) for c in ordered}
    else:
        devices = [d.strip() for d in str(devices_text).split(",") if d.strip()]
        if len(devices) != demand.total_devices:
            raise HcsError(
                f"pod {demand.key}: {A_ASSIGNED_DEVICES}={devices_text!r} names "
                f"{len(devices)} devices, the pod asks for {demand.total_devices}"
            )
        given = assign(demand.needs, devices)
    row = state.index.get(node)
    booked = {c.name: c for c in demand.placement if c.phase != "init"}
    init_book = demand.init_booking() or ordered[0]
    owner = owners(demand.needs, given)
    charges = []
    # One charge per (device, container that keeps it); a device only init containers used is
    # charged once, at their largest share (they never run beside each other).
    for c in ordered:
        for device in given[c.name]:
            if owner[device] != c.name and c.phase == "init":
                continue
            c_book = booked.get(c.name, init_book) if c.phase != "init" else init_book
            vram, fp16, fp32 = c_book.vram_mib, c_book.fp16_milli_tflops, c_book.fp32_milli_tflops
            share = None if c_book.whole else state.booked_share(row, vram, fp16, fp32)
            if share is not None:
                vram, fp16, fp32 = share  # a template where the node's shares are templates
            elif row is not None and device in state.device_ids[row]:
                slot = state.device_ids[row].index(device)
                vram = int(state.dev_vram_cap_mib[row, slot])
                fp16 = int(state.dev_fp16_cap_mtf[row, slot])
                fp32 = int(state.dev_fp32_cap_mtf[row, slot])
            charges.append(DeviceCharge(device, c.name, vram, fp16, fp32))
    vendor = annotations.get(A_ASSIGNED_VENDOR) or demand.fixed_vendor
    if vendor not in VENDOR_NAMES:
        vendor = VENDOR_NAMES[int(state.node_vendor[row])] if row is not None else "nvidia"
    return Allocation(
        demand.uid,
        demand.namespace,
        demand.name,
        node,
        vendor,
        tuple(charges),
        "confirmed",
        time.time(),
        assignment=tuple(given.items()) if demand.init_containers else (),
    )


def unplaced_holding(
    pod: Mapping[str, Any], state: ClusterState, vendors: VendorTable | None = None
) -> Allocation | None:
    """A pod HCS did not place (another scheduler, a preset nodeName, a legacy resource in an
    excluded namespace) that holds devices on a node without saying which: charged as holding
    that many whole devices, the node's idle devices from the highest slot down, so the node's
    free devices are right. When the device plugin writes the pod's assignment, the watch
    replaces this with the real devices."""
    spec = pod.get("spec") or {}
    node = spec.get("nodeName")
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    if not node or annotations.get(A_ASSIGNED_DEVICES):
        return None
    try:
        demand = parse_pod(pod, vendors)
    except HcsError:
        return None
    row = state.index.get(node)
    if not demand.asks_for_compute or row is None or not demand.uid:
        return None
    present = state.dev_present_mask[row]
    idle = np.flatnonzero(state.dev_idle_mask[row])[::-1].tolist()
    busy = [s for s in np.flatnonzero(present)[::-1].tolist() if s not in idle]
    slots = (idle + busy)[: demand.total_devices]
    ids = state.device_ids[row]
    charges = tuple(
        DeviceCharge(
            ids[s],
            c.name,
            int(state.dev_vram_cap_mib[row, s]),
            int(state.dev_fp16_cap_mtf[row, s]),
            int(state.dev_fp32_cap_mtf[row, s]),
        )
        for c, s in zip(
            (c for c in demand.placement for _ in range(c.devices)),
            slots,
            strict=False,
        )
    )
    log.info(
        "pod %s holds %d devices on %s without an HCS assignment: counted as %s",
        demand.key,
        demand.total_devices,
        node,
        ",".join(c.device_id for c in charges),
    )
    vendor = VENDOR_NAMES[int(state.node_vendor[row])]
    return Allocation(
        demand.uid, demand.namespace, demand.name, node, vendor, charges, "confirmed", time.time()
    )
