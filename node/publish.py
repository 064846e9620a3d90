"""Publishing the node's ComputeNode: create it, or write only what changed.

The spec (devices, capacity, topology) is written when it differs from what the API server has
(never from a failed discovery, except to create the object with no devices);
the status every heartbeat (its `lastHeartbeat` always moves), keeping each condition's
`lastTransitionTime` while its status stays the same. Every write carries the `resourceVersion`
that was read; a 409 Conflict means someone else wrote first: read again, retry.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Literal, cast

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from hcs.errors import HcsError
from hcs.models import API_GROUP

log = logging.getLogger("hcs.agent")
VERSION = "v1alpha1"
PLURAL = "computenodes"
Outcome = Literal["created", "updated", "heartbeat"]


class PublishError(HcsError):
    code = "AgentNotConnected"


def merge_conditions(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`new`, with the earlier lastTransitionTime wherever a condition did not change."""
    before = {c.get("type"): c for c in old}
    merged = []
    for fresh in new:
        cond = fresh
        prev = before.get(cond["type"])
        if (
            prev is not None
            and prev.get("status") == cond["status"]
            and prev.get("lastTransitionTime")
        ):
            cond = {**cond, "lastTransitionTime": prev["lastTransitionTime"]}
        merged.append(cond)
    return merged


class Publisher:
    def __init__(self, api: client.ApiClient, *, retries: int = 6) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.retries = retries

    def read(self, name: str) -> dict[str, Any] | None:
        """The ComputeNode as the API server has it, None if it does not exist."""
        try:
            found: Any = self.custom.get_cluster_custom_object(API_GROUP, VERSION, PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise PublishError(f"reading ComputeNode {name}: {exc.status} {exc.reason}") from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise PublishError(f"API server unreachable: {exc}") from None
        return cast(dict[str, Any], found)

    def pods_on(self, node: str) -> list[dict[str, Any]]:
        """The pods bound to `node` (Kubernetes JSON), to learn which devices they hold."""
        try:
            response: Any = self.core.list_pod_for_all_namespaces(
                field_selector=f"spec.nodeName={node}", _preload_content=False
            )
            items: list[dict[str, Any]] = json.loads(response.data).get("items") or []
        except ApiException as exc:
            raise PublishError(f"listing the pods of {node}: {exc.status} {exc.reason}") from None
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            raise PublishError(f"listing the pods of {node}: {exc}") from None
        return items

    def publish(self, desired: dict[str, Any], *, status_only: bool = False) -> Outcome:
        """Create or update the ComputeNode `desired`. With `status_only` (discovery failed)
        the spec on the server is left as it is. Raises PublishError (also when the API server
        cannot be reached: the agent logs it and tries again next heartbeat)."""
        try:
            return self._publish(desired, status_only=status_only)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise PublishError(f"API server unreachable: {exc}") from None

    def _publish(self, desired: dict[str, Any], *, status_only: bool) -> Outcome:
        name = desired["metadata"]["name"]
        for _ in range(self.retries):
            try:
                current: Any = self.custom.get_cluster_custom_object(
                    API_GROUP, VERSION, PLURAL, name
                )
            except ApiException as exc:
                if exc.status != 404:
                    raise PublishError(
                        f"reading ComputeNode {name}: {exc.status} {exc.reason}"
                    ) from None
                # Created even when discovery failed (no devices, NotReady, the reason in its
                # status): a node that publishes nothing would look like a dead agent.
                body = {k: v for k, v in desired.items() if k != "status"}
                try:
                    current = self.custom.create_cluster_custom_object(
                        API_GROUP, VERSION, PLURAL, body
                    )
                except ApiException as create_exc:
                    if create_exc.status == 409:
                        continue  # created meanwhile: read it and update
                    raise PublishError(
                        f"creating ComputeNode {name}: {create_exc.status} {create_exc.reason}"
                    ) from None
                self._write_status(current, desired)
                return "created"
            try:
                outcome: Outcome = "heartbeat"
                if not status_only and self._spec_differs(current, desired):
                    updated = {
                        **current,
                        "spec": desired["spec"],
                        "metadata": {
                            **current["metadata"],
                            "labels": {
                                **(current["metadata"].get("labels") or {}),
                                **(desired["metadata"].get("labels") or {}),
                            },
                        },
                    }
                    current = self.custom.replace_cluster_custom_object(
                        API_GROUP, VERSION, PLURAL, name, updated
                    )
                    outcome = "updated"
                self._write_status(current, desired)
                return outcome
            except ApiException as exc:
                if exc.status == 409:
                    log.info("ComputeNode %s changed meanwhile; reading it again", name)
                    continue
                raise PublishError(
                    f"writing ComputeNode {name}: {exc.status} {exc.reason}"
                ) from None
        raise PublishError(f"ComputeNode {name}: still conflicting after {self.retries} tries")

    @staticmethod
    def _spec_differs(current: dict[str, Any], desired: dict[str, Any]) -> bool:
        labels = current["metadata"].get("labels") or {}
        wanted = desired["metadata"].get("labels") or {}
        return bool(
            current.get("spec") != desired["spec"]
            or any(labels.get(k) != v for k, v in wanted.items())
        )

    def _write_status(self, current: dict[str, Any], desired: dict[str, Any]) -> None:
        status = dict(desired["status"])
        old = (current.get("status") or {}).get("conditions") or []
        status["conditions"] = merge_conditions(old, status["conditions"])
        body = {
            "apiVersion": current["apiVersion"],
            "kind": current["kind"],
            "metadata": {
                "name": current["metadata"]["name"],
                "resourceVersion": current["metadata"]["resourceVersion"],
            },
            "spec": current.get("spec"),
            "status": status,
        }
        self.custom.replace_cluster_custom_object_status(
            API_GROUP, VERSION, PLURAL, current["metadata"]["name"], body
        )
