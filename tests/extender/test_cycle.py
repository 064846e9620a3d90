"""Scheduling cycles while the books change: what the extender reuses from one call to the next
(kept evaluations, the filter's rows for prioritize, an equal filter reply) never changes an
answer. Every reply over the socket is checked against the engine run afresh on a copy of the
books (the reference tests check the engine itself)."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestClient

from extender.app import create_app
from hcs.demand import parse_pod
from hcs.engine import EngineConfig, Reason, compile_request, filter_nodes, prioritize
from hcs.scheduling import SchedulerService
from hcs.state import Allocation, ClusterState, DeviceCharge
from hcs.synthetic import make_node, random_cluster
from tests.extender.test_extender_http import k8s, pod

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[[web.Application], Awaitable[Client]]

SHAPES = (
    {"ai.compute/vram": "24Gi"},
    {"ai.compute/vram": "80Gi", "ai.compute/devices": "2"},
    {"ai.compute/vram": "16Gi", "ai.compute/tflops-fp16": "50"},
)


def fresh(service: SchedulerService) -> ClusterState:
    """The same books in a new state: nothing kept from earlier calls."""
    state = ClusterState.from_nodes(list(service.state.nodes.values()), service.vendors)
    for alloc in service.state.allocations.values():
        state.add_allocation(alloc)
    return state


def expected_filter(
    service: SchedulerService, p: dict[str, Any], names: list[str]
) -> tuple[list[str], dict[str, str]]:
    req = compile_request(parse_pod(p))
    result = filter_nodes(fresh(service), req, names, service.config)
    passed = [n for n, c in zip(names, result.codes.tolist(), strict=True) if c == 0]
    failed = {
        n: result.message(c)
        for n, c in zip(names, result.codes.tolist(), strict=True)
        if c and Reason(c) is not Reason.NodeNotFound
    }
    return passed, failed


def expected_scores(
    service: SchedulerService, p: dict[str, Any], names: list[str]
) -> dict[str, int]:
    req = compile_request(parse_pod(p))
    scores = prioritize(fresh(service), req, names, service.config)
    return dict(zip(names, scores.tolist(), strict=True))


async def start(
    aiohttp_client: MakeClient, n_nodes: int, seed: int
) -> tuple[SchedulerService, Client]:
    service = SchedulerService(
        ClusterState.from_nodes(random_cluster(n_nodes, seed=seed)), EngineConfig()
    )
    return service, await aiohttp_client(create_app(service))


async def call(http: Client, verb: str, p: dict[str, Any], names: list[str]) -> Any:
    # Go's encoder writes the fields in declaration order: NodeNames last.
    body = orjson.dumps({"Pod": p, "Nodes": None, "NodeNames": names})
    resp = await http.post(f"/{verb}", data=body, headers={"Content-Type": "application/json"})
    assert resp.status == 200, await resp.text()
    return orjson.loads(await resp.read())


async def test_every_reply_equals_a_fresh_engine_while_binds_change_the_books(
    aiohttp_client: MakeClient,
) -> None:
    service, http = await start(aiohttp_client, 60, 3)
    names = [*sorted(service.state.index), "ghost"]
    rng = random.Random(5)
    reused = 0
    for i in range(60):
        p = k8s(pod(f"u{i}", SHAPES[i % len(SHAPES)]))
        reply = await call(http, "filter", p, names)
        passed, failed = expected_filter(service, p, names)
        assert reply["Error"] == ""
        assert reply["NodeNames"] == passed
        assert {**reply["FailedNodes"], **reply["FailedAndUnresolvableNodes"]} == {
            **failed,
            "ghost": reply["FailedAndUnresolvableNodes"]["ghost"],
        }
        if not passed:
            continue
        # kube-scheduler's own filters keep all of them (the filter's rows are reused), or
        # drop some (the names are read again).
        asked = passed if i % 3 else [n for n in passed if rng.random() < 0.7] or passed
        reused += asked is passed
        scored = await call(http, "prioritize", p, asked)
        assert {h["Host"]: h["Score"] for h in scored} == expected_scores(service, p, asked)
        best = max(scored, key=lambda h: h["Score"])["Host"]
        meta = p["metadata"]
        bound = await http.post(
            "/bind",
            json={
                "PodName": meta["name"],
                "PodNamespace": meta["namespace"],
                "PodUID": meta["uid"],
                "Node": best,
            },
        )
        assert (await bound.json())["Error"] == ""
    assert reused > 20


async def test_a_node_gone_between_filter_and_prioritize_is_not_scored_from_old_rows(
    aiohttp_client: MakeClient,
) -> None:
    service, http = await start(aiohttp_client, 30, 4)
    names = sorted(service.state.index)
    p = k8s(pod("gone", SHAPES[0]))
    passed = (await call(http, "filter", p, names))["NodeNames"]
    assert len(passed) > 2
    service.state.remove_node(passed[0])
    # Another node takes the freed row, nearly full (binpack scores it best): old rows would
    # now point at it.
    service.state.upsert_node(make_node("newcomer", allocated_gi=[80] * 7 + [0]))
    scored = {h["Host"]: h["Score"] for h in await call(http, "prioritize", p, passed)}
    assert scored[passed[0]] == 0
    assert scored == expected_scores(service, p, passed)


async def test_an_unchanged_outcome_gives_the_same_bytes_and_a_changed_one_new_bytes(
    aiohttp_client: MakeClient,
) -> None:
    service, http = await start(aiohttp_client, 40, 6)
    names = sorted(service.state.index)

    async def raw(uid: str) -> bytes:
        body = orjson.dumps({"Pod": k8s(pod(uid, SHAPES[1])), "Nodes": None, "NodeNames": names})
        resp = await http.post("/filter", data=body)
        return await resp.read()

    first = await raw("a")
    assert await raw("b") == first  # same books, same reply
    passed = orjson.loads(first)["NodeNames"]
    # Every device of the first node that passed taken whole: its outcome changes.
    row = service.state.index[passed[0]]
    charges = tuple(
        DeviceCharge(d, "c", int(service.state.dev_vram_cap_mib[row, slot]), 0, 0)
        for slot, d in enumerate(service.state.device_ids[row])
    )
    service.state.add_allocation(
        Allocation("filler", "n", "f", passed[0], "nvidia", charges, "confirmed", 0.0)
    )
    changed = orjson.loads(await raw("c"))
    assert passed[0] not in changed["NodeNames"]
    assert changed["NodeNames"] == [n for n in passed if n != passed[0]]


async def test_names_that_need_escaping_still_make_valid_replies(
    aiohttp_client: MakeClient,
) -> None:
    """kube-scheduler may send a name HCS does not know, written any way: a quote or a
    backslash in it switches the reply to plain encoding, never to broken JSON."""
    service, http = await start(aiohttp_client, 5, 8)
    names = [*sorted(service.state.index), 'odd"name', "back\\slash"]
    p = k8s(pod("odd", SHAPES[0]))
    reply = await call(http, "filter", p, names)
    passed, failed = expected_filter(service, p, names)
    assert reply["NodeNames"] == passed
    assert set(reply["FailedAndUnresolvableNodes"]) >= {'odd"name', "back\\slash"}
    assert {**reply["FailedNodes"], **reply["FailedAndUnresolvableNodes"]}.keys() == (
        set(failed) | {'odd"name', "back\\slash"}
    )
    scored = await call(http, "prioritize", p, [*passed, 'odd"name'])
    assert {h["Host"]: h["Score"] for h in scored} == expected_scores(
        service, p, [*passed, 'odd"name']
    )
