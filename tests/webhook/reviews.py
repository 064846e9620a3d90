"""AdmissionReviews as kube-apiserver sends them (PROTOCOLS §B1), for the webhook tests."""

from typing import Any


def admission_review(
    pod: dict[str, Any],
    *,
    uid: str = "req-1",
    dry_run: bool = False,
    operation: str = "CREATE",
    namespace: str = "team-a",
) -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": operation,
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "groups": ["system:serviceaccounts", "system:authenticated"],
            },
            "object": pod,
            "oldObject": None,
            "dryRun": dry_run,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


def generated_pod(
    requests: dict[str, str], annotations: dict[str, str] | None = None, namespace: str = "team-a"
) -> dict[str, Any]:
    """A ReplicaSet's pod: generateName, no name, one container."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "p-",
            "namespace": namespace,
            "annotations": annotations or {},
        },
        "spec": {
            "containers": [{"name": "main", "image": "img", "resources": {"requests": requests}}]
        },
    }
