"""The optional cert-manager component issues the certificate the webhook mounts, for the names
`hcs certs` uses, and has the CA injected into the shipped webhook configuration."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from certs import service_names

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"
COMPONENT = MANIFESTS / "components" / "cert-manager"


def component_objects() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((COMPONENT / "certificates.yaml").read_text()) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def test_the_serving_certificate_matches_what_the_webhook_mounts_and_is_called() -> None:
    certificates = by_kind(component_objects(), "Certificate")
    serving = certificates["hcs-webhook"]["spec"]
    (webhook,) = by_kind(
        list(yaml.safe_load_all((MANIFESTS / "webhook.yaml").read_text())), "Deployment"
    ).values()
    volumes = webhook["spec"]["template"]["spec"]["volumes"]
    assert serving["secretName"] == volumes[0]["secret"]["secretName"]
    names = [n for n in service_names("hcs-webhook", "hcs-system") if n != "localhost"]
    assert serving["dnsNames"] == names
    issuers = by_kind(component_objects(), "Issuer")
    ca_issuer = issuers[serving["issuerRef"]["name"]]["spec"]["ca"]
    assert certificates["hcs-webhook-ca"]["spec"]["isCA"] is True
    assert ca_issuer["secretName"] == certificates["hcs-webhook-ca"]["spec"]["secretName"]
    assert (
        "selfSigned" in issuers[certificates["hcs-webhook-ca"]["spec"]["issuerRef"]["name"]]["spec"]
    )


def test_the_ca_injection_names_the_serving_certificate_and_the_shipped_configuration() -> None:
    kustomization = yaml.safe_load((COMPONENT / "kustomization.yaml").read_text())
    (patch,) = kustomization["patches"]
    body = yaml.safe_load((COMPONENT / patch["path"]).read_text())
    config = yaml.safe_load((MANIFESTS / "webhook-configuration.yaml").read_text())
    assert patch["target"]["name"] == body["metadata"]["name"] == config["metadata"]["name"]
    assert (
        body["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
        == "hcs-system/hcs-webhook"
    )


def test_kubectl_kustomize_renders_the_component_when_kubectl_is_here(tmp_path: Path) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:  # the two tests above check the same promise by hand
        pytest.skip("kubectl is not installed here")
    base = os.path.relpath(MANIFESTS, tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        f"resources: [{base}]\ncomponents: [{base}/components/cert-manager]\n"
    )
    out = subprocess.run(
        [kubectl, "kustomize", str(tmp_path)], capture_output=True, text=True, check=True
    ).stdout
    rendered = [d for d in yaml.safe_load_all(out) if d]
    assert set(by_kind(rendered, "Certificate")) == {"hcs-webhook", "hcs-webhook-ca"}
    (config,) = by_kind(rendered, "MutatingWebhookConfiguration").values()
    assert config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
    assert config["webhooks"][0]["clientConfig"]["service"]["name"] == "hcs-webhook"
