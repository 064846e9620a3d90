"""Small reads through the official client that several components share."""

from __future__ import annotations

from collections.abc import Callable, Iterator
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


LIST_PAGE = 500
"""Objects per list page (client-go's informers and pagers list 500 at a time)."""
LIST_TIMEOUT_S = 60.0
"""A list page that never answers must end (and be retried), not hold its caller forever."""


def list_pages(
    call: Callable[..., Any], *args: Any, **kwargs: Any
) -> Iterator[tuple[list[dict[str, Any]], str]]:
    """A list through a client `list_*` method, LIST_PAGE objects at a time (`limit` and
    `continue`), each page decoded with orjson and handed on before the next is asked, so a
    list of 50,000 objects never sits in memory whole. Yields (items, the list's
    resourceVersion); an expired continue token (410) is raised, and the caller lists again
    from the start."""
    token: str | None = None
    while True:
        extra: dict[str, Any] = {"limit": LIST_PAGE, "_request_timeout": LIST_TIMEOUT_S}
        if token:
            extra["_continue"] = token
        resp: Any = call(*args, **kwargs, **extra, _preload_content=False)
        data: Any = orjson.loads(resp.data)
        meta = data.get("metadata") or {}
        yield list(data.get("items") or []), str(meta.get("resourceVersion") or "")
        token = meta.get("continue") or None
        if token is None:
            return


def list_all(call: Callable[..., Any], *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
    """Every object of a list, read in pages (`list_pages`)."""
    return [obj for items, _ in list_pages(call, *args, **kwargs) for obj in items]
