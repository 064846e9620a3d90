"""Small reads through the official client that several components share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from kubernetes import client
from kubernetes.client.exceptions import ApiException

CALL_TIMEOUT_S = 1.5
"""Every call on the bind path: four of them stay below kube-scheduler's 5 s httpTimeout."""


def read_json(
    read: Callable[..., Any], name: str, namespace: str, timeout: float = CALL_TIMEOUT_S
) -> dict[str, Any] | None:
    """One namespaced object as JSON through a client `read_namespaced_*` method (None if it
    does not exist); other API errors are raised."""
    try:
        # _preload_content=False hands back the raw response (the stubs say the model).
        raw: Any = read(name, namespace, _preload_content=False, _request_timeout=timeout)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    obj: dict[str, Any] = orjson.loads(raw.data)
    return obj


def read_pod(
    core: client.CoreV1Api, namespace: str, name: str, timeout: float = CALL_TIMEOUT_S
) -> dict[str, Any] | None:
    """The Pod as JSON (None if it does not exist); other API errors are raised."""
    return read_json(core.read_namespaced_pod, name, namespace, timeout)
