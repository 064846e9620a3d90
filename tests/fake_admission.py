"""kube-apiserver's admission-time checks that HCS ships, imitated for tests: ValidatingAdmission
Policies and their bindings, a webhook's `rules` / `namespaceSelector` / `matchConditions`, and
RBAC. It follows kube-apiserver's rules, not HCS's code (it imports none of it):

- a policy applies when its `matchConstraints` and its binding's `matchResources` both match the
  request (operation, group, version, resource with `/subresource`, namespace labels; cluster-scoped
  objects ignore namespace selectors), then every `matchCondition` must be true;
- `variables` are evaluated lazily, in a shared `variables` map; `validations` deny when false,
  with the `messageExpression`'s text, else `message`; an evaluation error applies the policy's
  `failurePolicy` (HCS ships only `Fail`: denied);
- the CEL environment is `object`, `oldObject` (null on CREATE and DELETE respectively),
  `request` (the AdmissionRequest as JSON: `userInfo.extra` only when set), `namespaceObject`,
  `params` (null) and `variables`;
- RBAC: ClusterRoleBindings grant everywhere, RoleBindings only in their namespace; a rule
  grants a (group, resource or resource/subresource, verb) when each list holds it or `*`, and
  `resourceNames` limits it to named objects.

The CEL engine is cel-python. Kubernetes' optional field syntax `a.?b.orValue(c)` is rewritten to
`(has(a.b) ? a.b : c)` first: cel-python lacks it (the issue allows this rewrite).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import celpy
from celpy import celtypes
from celpy.adapter import json_to_cel
from celpy.evaluation import CELEvalError

# --------------------------------------------------------------------------- CEL


_OPTIONAL = re.compile(r"([A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*)\.\?([A-Za-z_]\w*)\.orValue\(")


def _closing(text: str, start: int) -> int:
    """Index of the `)` closing the call whose arguments start at `start`."""
    depth, quote, i = 1, "", start
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise ValueError(f"unbalanced call in {text!r}")


def rewrite_optional(expr: str) -> str:
    while (m := _OPTIONAL.search(expr)) is not None:
        end = _closing(expr, m.end())
        base, name, default = m.group(1), m.group(2), expr[m.end() : end]
        expr = (
            f"{expr[: m.start()]}(has({base}.{name}) ? {base}.{name} : {default}){expr[end + 1 :]}"
        )
    return expr


_ENV = celpy.Environment()


@cache
def _program(expr: str) -> Any:
    return _ENV.program(_ENV.compile(rewrite_optional(expr)))


class CelError(Exception):
    """The expression failed to evaluate (kube-apiserver: an evaluation error)."""


def to_cel(value: Any) -> Any:
    return celtypes.NullType() if value is None else json_to_cel(value)


def evaluate(expr: str, activation: Mapping[str, Any]) -> Any:
    try:
        result = _program(expr).evaluate(dict(activation))
    except CELEvalError as exc:
        raise CelError(str(exc)) from None
    if isinstance(result, CELEvalError):
        raise CelError(str(result))
    return result


class _Variables(celtypes.MapType):
    """`variables`, evaluated when first read, as kube-apiserver does (a variable whose
    evaluation fails is an error only for the expression that reads it)."""

    def __init__(self, specs: list[dict[str, Any]], activation: dict[str, Any]) -> None:
        super().__init__({})
        self._specs = {v["name"]: v["expression"] for v in specs}
        self._activation = activation

    def __getitem__(self, key: Any) -> Any:
        name = str(key)
        if not super().__contains__(celtypes.StringType(name)):
            if name not in self._specs:
                raise KeyError(name)
            try:
                value: Any = evaluate(self._specs[name], self._activation)
            except CelError as exc:
                value = CELEvalError(str(exc))
            super().__setitem__(celtypes.StringType(name), value)
        # An error is returned as a value: CEL's `||` and `&&` absorb it where the other side
        # decides, as cel-go does.
        return super().__getitem__(celtypes.StringType(name))

    def __contains__(self, key: Any) -> bool:
        return str(key) in self._specs


# --------------------------------------------------------------------------- requests


@dataclass
class Request:
    """What kube-apiserver admits: one API call."""

    operation: str
    resource: str
    """`pods`, `pods/ephemeralcontainers`, `computenodes/status`, ..."""
    group: str = ""
    version: str = "v1"
    namespace: str = ""
    name: str = ""
    object: dict[str, Any] | None = None
    old_object: dict[str, Any] | None = None
    user: str = "alice"
    groups: list[str] = field(default_factory=lambda: ["system:authenticated"])
    extra: dict[str, list[str]] = field(default_factory=dict)

    @property
    def base_resource(self) -> str:
        return self.resource.split("/", 1)[0]

    @property
    def sub_resource(self) -> str:
        return self.resource.partition("/")[2]

    def as_json(self) -> dict[str, Any]:
        user: dict[str, Any] = {"username": self.user, "groups": list(self.groups)}
        if self.extra:
            user["extra"] = {k: list(v) for k, v in self.extra.items()}
        out: dict[str, Any] = {
            "uid": "req",
            "resource": {
                "group": self.group,
                "version": self.version,
                "resource": self.base_resource,
            },
            "operation": self.operation,
            "userInfo": user,
            "dryRun": False,
        }
        if self.sub_resource:
            out["subResource"] = self.sub_resource
        if self.namespace:
            out["namespace"] = self.namespace
        if self.name:
            out["name"] = self.name
        return out


def service_account(namespace: str, name: str, node: str | None = None) -> dict[str, Any]:
    """Request identity fields of a pod's bound service-account token (with the node it runs
    on, as Kubernetes 1.30+ puts in the user's extra)."""
    extra = {"authentication.kubernetes.io/node-name": [node]} if node else {}
    return {
        "user": f"system:serviceaccount:{namespace}:{name}",
        "groups": ["system:serviceaccounts", f"system:serviceaccounts:{namespace}"],
        "extra": extra,
    }


def namespace_object(name: str, labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": name,
            "labels": {"kubernetes.io/metadata.name": name, **(labels or {})},
        },
    }


# --------------------------------------------------------------------------- matching


def _selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A metav1.LabelSelector (absent or empty: everything)."""
    if not selector:
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


def _rule_matches(rule: Mapping[str, Any], request: Request) -> bool:
    def has(values: Iterable[str], value: str) -> bool:
        return "*" in values or value in values

    resources = rule.get("resources") or []
    base, sub = request.base_resource, request.sub_resource
    resource_ok = (
        request.resource in resources
        or (not sub and "*" in resources)
        or (sub and (f"*/{sub}" in resources or f"{base}/*" in resources or "*/*" in resources))
    )
    return bool(
        has(rule.get("operations") or [], request.operation)
        and has(rule.get("apiGroups") or [], request.group)
        and has(rule.get("apiVersions") or [], request.version)
        and resource_ok
        and (not rule.get("resourceNames") or request.name in rule["resourceNames"])
    )


def _match_resources(
    match: Mapping[str, Any] | None, request: Request, namespaces: Mapping[str, dict[str, Any]]
) -> bool:
    if match is None:
        return True
    rules = match.get("resourceRules")
    if rules is not None and not any(_rule_matches(r, request) for r in rules):
        return False
    if any(_rule_matches(r, request) for r in match.get("excludeResourceRules") or []):
        return False
    if request.namespace:
        ns_labels = namespaces[request.namespace]["metadata"].get("labels") or {}
        if not _selects(match.get("namespaceSelector"), ns_labels):
            return False
    target = request.object if request.object is not None else request.old_object or {}
    labels = (target.get("metadata") or {}).get("labels") or {}
    return _selects(match.get("objectSelector"), labels)


@dataclass(frozen=True)
class Denial:
    policy: str
    message: str
    reason: str = "Invalid"


class Admission:
    """The shipped policies and bindings, applied to requests as kube-apiserver does."""

    def __init__(
        self, docs: Iterable[Mapping[str, Any]], namespaces: Iterable[dict[str, Any]] = ()
    ) -> None:
        docs = list(docs)
        self.policies = {
            d["metadata"]["name"]: d for d in docs if d["kind"] == "ValidatingAdmissionPolicy"
        }
        self.bindings = [d for d in docs if d["kind"] == "ValidatingAdmissionPolicyBinding"]
        # kube-apiserver labels every namespace with its own name (kubernetes.io/metadata.name).
        self.namespaces = {
            n["metadata"]["name"]: namespace_object(
                n["metadata"]["name"], n["metadata"].get("labels") or {}
            )
            for n in namespaces
        }
        self.evaluated: list[str] = []
        """Names of the policies that applied to the last request (for tests of matching)."""

    def namespace(self, name: str, labels: Mapping[str, str] | None = None) -> None:
        self.namespaces[name] = namespace_object(name, labels)

    def _activation(self, request: Request) -> dict[str, Any]:
        ns = self.namespaces.get(request.namespace) if request.namespace else None
        return {
            "object": to_cel(request.object),
            "oldObject": to_cel(request.old_object),
            "request": to_cel(request.as_json()),
            "namespaceObject": to_cel(ns),
            "params": celtypes.NullType(),
        }

    def review(self, request: Request) -> list[Denial]:
        """Every denial of the request (empty: admitted by the policies)."""
        if request.namespace and request.namespace not in self.namespaces:
            self.namespace(request.namespace)
        denials: list[Denial] = []
        self.evaluated = []
        for binding in self.bindings:
            name = binding["spec"]["policyName"]
            policy = self.policies[name]
            spec = policy["spec"]
            if not _match_resources(spec.get("matchConstraints"), request, self.namespaces):
                continue
            if not _match_resources(
                binding["spec"].get("matchResources"), request, self.namespaces
            ):
                continue
            denials += self._apply(name, spec, request)
        return denials

    def _apply(self, name: str, spec: Mapping[str, Any], request: Request) -> list[Denial]:
        activation = self._activation(request)
        activation["variables"] = _Variables(spec.get("variables") or [], activation)
        fail = spec.get("failurePolicy", "Fail") == "Fail"
        try:
            for condition in spec.get("matchConditions") or []:
                if not bool(evaluate(condition["expression"], activation)):
                    return []
        except CelError as exc:
            return [Denial(name, f"matchCondition error: {exc}")] if fail else []
        self.evaluated.append(name)
        out = []
        for v in spec.get("validations") or []:
            try:
                ok = bool(evaluate(v["expression"], activation))
            except CelError as exc:
                if fail:
                    out.append(Denial(name, f"expression error: {exc}: {v['expression']}"))
                continue
            if ok:
                continue
            message = v.get("message") or f"failed expression: {v['expression']}"
            if v.get("messageExpression"):
                try:
                    text = evaluate(v["messageExpression"], activation)
                    if isinstance(text, str) and text.strip():
                        message = str(text)
                except CelError:
                    pass
            out.append(Denial(name, message, v.get("reason", "Invalid")))
        return out


def webhook_matches(
    config: Mapping[str, Any], request: Request, namespaces: Mapping[str, dict[str, Any]]
) -> list[str]:
    """The webhooks of a Mutating/ValidatingWebhookConfiguration that kube-apiserver would call
    for `request` (a matchCondition error with failurePolicy Fail raises CelError: the request
    is rejected)."""
    called = []
    activation = {
        "object": to_cel(request.object),
        "oldObject": to_cel(request.old_object),
        "request": to_cel(request.as_json()),
    }
    for hook in config["webhooks"]:
        match = {
            "resourceRules": hook.get("rules") or [],
            "namespaceSelector": hook.get("namespaceSelector"),
            "objectSelector": hook.get("objectSelector"),
        }
        if not _match_resources(match, request, namespaces):
            continue
        try:
            if all(
                bool(evaluate(c["expression"], activation))
                for c in hook.get("matchConditions") or []
            ):
                called.append(hook["name"])
        except CelError:
            if hook.get("failurePolicy", "Fail") == "Fail":
                raise
    return called


# --------------------------------------------------------------------------- RBAC


class Rbac:
    """Roles, ClusterRoles and their bindings; `allows` answers as the RBAC authorizer does
    (built-in roles that are not in the documents grant nothing here)."""

    def __init__(self, docs: Iterable[Mapping[str, Any]]) -> None:
        docs = list(docs)
        self.cluster_roles = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ClusterRole"}
        self.roles = {
            (d["metadata"]["namespace"], d["metadata"]["name"]): d
            for d in docs
            if d["kind"] == "Role"
        }
        self.cluster_bindings = [d for d in docs if d["kind"] == "ClusterRoleBinding"]
        self.bindings = [d for d in docs if d["kind"] == "RoleBinding"]

    @staticmethod
    def _subject(binding: Mapping[str, Any], user: str) -> bool:
        for s in binding.get("subjects") or []:
            if s["kind"] == "ServiceAccount":
                if user == f"system:serviceaccount:{s.get('namespace')}:{s['name']}":
                    return True
            elif s["kind"] == "User" and s["name"] == user:
                return True
        return False

    @staticmethod
    def _grants(role: Mapping[str, Any], verb: str, group: str, resource: str, name: str) -> bool:
        for rule in role.get("rules") or []:
            names = rule.get("resourceNames") or []
            if (
                (verb in rule.get("verbs", []) or "*" in rule.get("verbs", []))
                and (group in rule.get("apiGroups", []) or "*" in rule.get("apiGroups", []))
                and (resource in rule.get("resources", []) or "*" in rule.get("resources", []))
                and (not names or name in names)
            ):
                return True
        return False

    def allows(
        self,
        user: str,
        verb: str,
        group: str,
        resource: str,
        *,
        namespace: str = "",
        name: str = "",
    ) -> bool:
        for b in self.cluster_bindings:
            role = self.cluster_roles.get(b["roleRef"]["name"])
            if role and self._subject(b, user) and self._grants(role, verb, group, resource, name):
                return True
        for b in self.bindings:
            if b["metadata"]["namespace"] != namespace or not self._subject(b, user):
                continue
            ref = b["roleRef"]
            role = (
                self.cluster_roles.get(ref["name"])
                if ref["kind"] == "ClusterRole"
                else self.roles.get((namespace, ref["name"]))
            )
            if role and self._grants(role, verb, group, resource, name):
                return True
        return False
