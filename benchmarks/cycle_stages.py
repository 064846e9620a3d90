"""Where one scheduling cycle's time goes, stage by stage, in process (no HTTP).

The same inventory, pods and binds as `extender_http.py` (its helpers), but the extender's
functions are called one stage at a time, as `SchedulerService.filter_body` and
`prioritize_body` call them, and each stage is timed (p50 over the cycles, milliseconds):

- parse: split the candidate list off the body, decode the Pod, the candidate list's bytes
  looked up (decoded only when new), the pod's request (cached by shape);
- name -> row: the candidates' state rows;
- kernel: the fit rules for the pod's shape (a kept evaluation patched with the rows the last
  binds changed; `kernel (fresh)` is the same evaluation made from nothing, for comparison);
- filter reply: grouping the candidates by reason and encoding the reply;
- scoring: the scores of the candidates that passed, normalized to 0..10;
- prioritize reply: encoding;
- codec floor: orjson decoding both requests and encoding both replies as plain objects (what
  the practical floor server does besides HTTP).

Also the peak resident memory of the run (each size in a process of its own): the engine's
arrays (no ComputeNode object kept, as in cluster mode), the kept evaluations and every
cache, with `--memory-nodes` (default 50,000) run for a few cycles for that figure alone
(target: <= 300 MB).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import resource
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
import orjson
from common import print_row
from extender_http import _background, _bind_body, _pod

from hcs.engine import (
    EngineConfig,
    FilterResult,
    _Kernel,
    evaluate,
    normalize_scores,
    score_percent,
)
from hcs.scheduling import SchedulerService, _filter_reply
from hcs.state import ClusterState
from hcs.synthetic import random_cluster
from hcs.wire import split_node_names


def run(n_nodes: int, cycles: int, seed: int) -> dict[str, Any]:
    # As in cluster mode: the arrays only, no ComputeNode object kept (each is dropped once
    # its row is written).
    nodes = random_cluster(n_nodes, seed)
    state = ClusterState(width=8, rows=n_nodes, keep_nodes=False)
    while nodes:
        state.upsert_node(nodes.pop())
    service = SchedulerService(state, EngineConfig())
    _background(service, n_nodes, seed)
    names = [f"node-{i:05d}" for i in range(n_nodes)]
    loop = asyncio.new_event_loop()
    stages: dict[str, list[float]] = {}

    def lap(stage: str, since: float) -> float:
        now = time.perf_counter()
        stages.setdefault(stage, []).append((now - since) * 1e3)
        return now

    for i in range(cycles):
        pod = _pod(i, "stage")
        body = orjson.dumps({"Pod": pod, "Nodes": None, "NodeNames": names})
        t = time.perf_counter()
        split = split_node_names(body)
        assert split is not None
        head, segment = split
        raw = orjson.loads(head)
        candidates = service._names_for(segment)
        assert candidates is not None
        seen = service._pod_request(raw["Pod"], "Pod")
        t = lap("parse", t)
        found = state.resolve(candidates)
        t = lap("name -> row", t)
        ev = evaluate(state, seen.request, found.rows, service.config)
        t = lap("kernel", t)
        fr = FilterResult(found.names, ev.codes, seen.request, service.config, None, found)
        reply = _filter_reply(fr, found, None)
        t = lap("filter reply", t)
        _Kernel(state, seen.request, service.config, None, slice(None), empty_cluster=False)
        t = lap("kernel (fresh, for comparison)", t)
        passed = reply.passed
        if not len(passed.rows):
            continue
        prio_body = orjson.dumps({"Pod": pod, "Nodes": None, "NodeNames": passed.names.tolist()})
        t = time.perf_counter()
        ev2 = evaluate(state, seen.request, passed.rows, service.config)
        scores = normalize_scores(
            score_percent(state, seen.request, ev2, service.config), ev2.codes == 0
        )
        t = lap("scoring", t)
        service.prioritize(raw, passed)  # scoring again (kept) + the reply's encoding
        t = lap("prioritize (scoring + reply)", t)
        # The codec floor: what the practical floor server does besides HTTP (decode both
        # requests, encode both replies from objects).
        filter_obj = orjson.loads(reply.body)
        hosts = zip(passed.names.tolist(), scores.tolist(), strict=True)
        prio_obj = [{"Host": h, "Score": s} for h, s in hosts]
        t = time.perf_counter()
        orjson.loads(body)
        orjson.dumps(filter_obj)
        orjson.loads(prio_body)
        orjson.dumps(prio_obj)
        t = lap("codec floor (both calls)", t)
        best = passed.names[int(np.argmax(scores))]
        loop.run_until_complete(service.bind(orjson.loads(_bind_body(pod, best))))
    warm = max(cycles // 10, 1)
    row: dict[str, Any] = {"nodes": n_nodes}
    for stage, times in stages.items():
        row[f"{stage} p50 ms"] = round(statistics.median(times[warm:]), 3)
    row["rss MB"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[5000, 20000])
    parser.add_argument("--cycles", type=int, default=400)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--memory-nodes", type=int, default=50000, help="0: skip")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    context = multiprocessing.get_context("spawn")
    sizes = [(n, args.cycles) for n in args.nodes]
    if args.memory_nodes:
        sizes.append((args.memory_nodes, 60))
    for n, cycles in sizes:
        with ProcessPoolExecutor(1, mp_context=context) as pool:
            row = pool.submit(run, n, cycles, args.seed).result()
        print_row(row, as_json=args.json)
        if not args.json:
            print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
