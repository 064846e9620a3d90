"""Helpers shared by the benchmarks (run as scripts: `python benchmarks/<name>.py`)."""

from __future__ import annotations

import json
import socket
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(port: int, timeout: float = 60.0) -> None:
    """Wait until a server accepts connections on 127.0.0.1:port (it builds its inventory
    first)."""
    deadline = time.time() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.1)


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def print_row(row: dict[str, object], *, as_json: bool) -> None:
    """One result: a JSON object, or aligned `key  value` lines."""
    if as_json:
        print(json.dumps(row))
        return
    width = max(map(len, row))
    for key, value in row.items():
        print(f"{key:<{width}}  {value}")
