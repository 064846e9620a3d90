"""The webhook over real TLS: certificates made by `hcs certs`, verified as kube-apiserver does
(CA bundle, server name <service>.<namespace>.svc), the AdmissionReview envelope, rotation."""

import asyncio
import base64
import os
import ssl
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web
from cryptography import x509

from certs import CertFiles, ca_bundle, issue
from hcs.admission import AdmissionContext
from hcs.errors import ConfigError
from hcs.quota import QuotaBook
from hcs.state import ClusterState
from hcs.synthetic import make_node
from tests.webhook.reviews import admission_review, generated_pod
from tests.webhook.test_admission import applied
from webhook.app import cert_reloader, create_app, ssl_context

SERVER_NAME = "hcs-webhook.hcs-system.svc"


def review_body(uid: str = "r-1") -> dict[str, Any]:
    return admission_review(generated_pod({"ai.compute/vram": "8Gi"}), uid=uid)


class Webhook:
    def __init__(self, certs: CertFiles, url: str, tls: ssl.SSLContext) -> None:
        self.certs, self.url, self.tls = certs, url, tls

    def client_context(self, ca: Path | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(ca or self.certs.ca_cert))
        return ctx

    async def post(self, body: Any, ca: Path | None = None) -> aiohttp.ClientResponse:
        async with aiohttp.ClientSession() as session:
            resp = await session.post(
                self.url + "/mutate?timeout=5s",
                json=body,
                ssl=self.client_context(ca),
                server_hostname=SERVER_NAME,
            )
            await resp.read()
            return resp

    async def peer_certificate(self, ca: Path | None = None) -> x509.Certificate:
        host, port = self.url.removeprefix("https://").split(":")
        _, writer = await asyncio.open_connection(
            host, int(port), ssl=self.client_context(ca), server_hostname=SERVER_NAME
        )
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        return x509.load_der_x509_certificate(der)


@pytest.fixture
async def webhook(tmp_path: Path) -> AsyncIterator[Webhook]:
    certs = issue(tmp_path / "certs")
    tls = ssl_context(certs)
    context = AdmissionContext(ClusterState.from_nodes([make_node("g")]), QuotaBook())
    app = create_app(context)
    app.cleanup_ctx.append(cert_reloader(tls, certs, interval=0.05))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield Webhook(certs, f"https://127.0.0.1:{port}", tls)
    await runner.cleanup()


async def test_a_client_verifying_the_ca_and_service_name_gets_the_envelope(
    webhook: Webhook,
) -> None:
    sent = review_body("abc-123")
    resp = await webhook.post(sent)
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("application/json")
    body = await resp.json()
    assert set(body) == {"apiVersion", "kind", "response"}
    assert (body["apiVersion"], body["kind"]) == ("admission.k8s.io/v1", "AdmissionReview")
    response = body["response"]
    assert response["uid"] == "abc-123" and response["allowed"] is True
    assert response["patchType"] == "JSONPatch"
    base64.b64decode(response["patch"], validate=True)  # standard base64 with padding
    applied(sent["request"]["object"], response)  # and it applies to the pod as sent


async def test_denials_are_200_with_allowed_false(webhook: Webhook) -> None:
    body = review_body("deny-1")
    body["request"]["object"]["metadata"]["annotations"] = {"hcs.io/allow-downgrade": "maybe"}
    resp = await webhook.post(body)
    assert resp.status == 200
    response = (await resp.json())["response"]
    assert response["allowed"] is False and response["uid"] == "deny-1"
    assert response["status"]["message"].startswith("InvalidAnnotation:")


@pytest.mark.parametrize("body", [[], {"kind": "AdmissionReview"}, "not json at all"])
async def test_a_body_that_is_not_a_review_is_400_and_the_server_keeps_serving(
    webhook: Webhook, body: Any
) -> None:
    async with aiohttp.ClientSession() as session:
        data = body if isinstance(body, str) else None
        resp = await session.post(
            webhook.url + "/mutate",
            data=data,
            json=None if data else body,
            ssl=webhook.client_context(),
            server_hostname=SERVER_NAME,
        )
        assert resp.status == 400
        assert "not an AdmissionReview" in await resp.text()
    assert (await webhook.post(review_body())).status == 200


async def test_tls_is_at_least_1_2(webhook: Webhook) -> None:
    assert webhook.tls.minimum_version == ssl.TLSVersion.TLSv1_2


async def test_a_wrong_server_name_is_refused_by_a_verifying_client(webhook: Webhook) -> None:
    ctx = webhook.client_context()
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await session.post(
                webhook.url + "/mutate",
                json=review_body(),
                ssl=ctx,
                server_hostname="evil.example.com",
            )


async def test_rotated_certificates_are_picked_up_without_a_restart(
    webhook: Webhook, tmp_path: Path
) -> None:
    before = await webhook.peer_certificate()
    # The Secret is updated in place with a certificate from another CA (trustme's).
    ca = trustme.CA()
    leaf = ca.issue_cert(SERVER_NAME, "127.0.0.1")
    leaf.private_key_pem.write_to_path(str(webhook.certs.tls_key))
    leaf.cert_chain_pems[0].write_to_path(str(webhook.certs.tls_cert))
    ca_path = tmp_path / "trustme-ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    deadline = asyncio.get_running_loop().time() + 5
    while True:
        try:
            after = await webhook.peer_certificate(ca_path)
            break
        except ssl.SSLError:
            assert asyncio.get_running_loop().time() < deadline, "new certificate not served"
            await asyncio.sleep(0.05)
    assert after.serial_number != before.serial_number
    assert (await webhook.post(review_body(), ca=ca_path)).status == 200


def test_hcs_certs_makes_the_right_names_and_private_keys(tmp_path: Path) -> None:
    files = issue(tmp_path, "hcs-webhook", "hcs-system", days=30)
    cert = x509.load_pem_x509_certificate(files.tls_cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [
        "hcs-webhook",
        "hcs-webhook.hcs-system",
        "hcs-webhook.hcs-system.svc",
        "hcs-webhook.hcs-system.svc.cluster.local",
        "localhost",
    ]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    for key in (files.tls_key, tmp_path / "ca.key"):
        assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    assert cert.issuer == ca.subject
    assert cert.not_valid_after_utc > cert.not_valid_before_utc


def test_renewal_reuses_the_ca_so_the_ca_bundle_stays_valid(tmp_path: Path) -> None:
    issue(tmp_path)
    bundle = ca_bundle(tmp_path)
    first = (tmp_path / "tls.crt").read_bytes()
    issue(tmp_path)
    assert ca_bundle(tmp_path) == bundle
    assert (tmp_path / "tls.crt").read_bytes() != first
    assert base64.b64decode(bundle) == (tmp_path / "ca.crt").read_bytes()


def test_bad_days_and_unreadable_cas_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least 1"):
        issue(tmp_path, days=0)
    (tmp_path / "ca.crt").write_text("garbage")
    (tmp_path / "ca.key").write_text("garbage")
    with pytest.raises(ConfigError, match="existing CA cannot be read"):
        issue(tmp_path)
