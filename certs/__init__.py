"""Certificates for the webhook, made with `cryptography`.

kube-apiserver connects to `https://<service>.<namespace>.svc:<port>` with that TLS server name
and refuses a certificate that names it only in the Common Name, so the serving certificate
carries DNS SANs for every form of the service name (plus localhost and 127.0.0.1 for local use)
and is signed by a CA whose PEM, base64-encoded, is the webhook configuration's `caBundle`.

An existing CA is reused on renewal, so the `caBundle` already in the cluster stays valid. Files
are written atomically (a temporary file renamed into place) so a server reloading them never
reads half a certificate; keys get mode 0600.

Nothing given is ever overwritten: a certificate without its key (or the reverse), for the CA or
the serving pair, or a file that does not parse, is a ConfigError naming the file. Replacing it
would make a CA the cluster's `caBundle` does not know, and with `failurePolicy: Fail` every pod
asking for HCS would be refused. New files are made only where none of the pair exists.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hcs.errors import ConfigError

CA_CERT, CA_KEY, TLS_CERT, TLS_KEY = "ca.crt", "ca.key", "tls.crt", "tls.key"
# What a serving key given by cert-manager or an operator may be (TLS server keys).
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


@dataclass(frozen=True)
class CertFiles:
    folder: Path

    @property
    def ca_cert(self) -> Path:
        return self.folder / CA_CERT

    @property
    def tls_cert(self) -> Path:
        return self.folder / TLS_CERT

    @property
    def tls_key(self) -> Path:
        return self.folder / TLS_KEY


def service_names(service: str, namespace: str) -> list[str]:
    return [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
        "localhost",
    ]


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _half_pair(cert_path: Path, key_path: Path) -> None:
    """A ConfigError when exactly one of a certificate and its key exists."""
    if cert_path.exists() == key_path.exists():
        return
    have, missing = (cert_path, key_path) if cert_path.exists() else (key_path, cert_path)
    raise ConfigError(
        f"{missing}: missing beside {have.name}; certificates given are never replaced (restore "
        f"{missing.name}, or remove {have.name} to have a new pair made)"
    )


def _read_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (ValueError, OSError) as exc:
        raise ConfigError(f"{path}: not a PEM certificate ({_why(exc)})") from None


def _read_key(path: Path) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, OSError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"{path}: not an unencrypted PEM private key ({_why(exc)})") from None
    if not isinstance(key, PrivateKey):
        raise ConfigError(f"{path}: a {type(key).__name__}, expected an EC, RSA or Ed25519 key")
    return key


def _why(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:120]


def _matches(cert: x509.Certificate, key: PrivateKey) -> bool:
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    return bool(
        cert.public_key().public_bytes(der, spki) == key.public_key().public_bytes(der, spki)
    )


def check_pair(cert_path: Path, key_path: Path) -> x509.Certificate:
    """The certificate at `cert_path`, checked to parse and to belong to the key at `key_path`
    (both exist); a ConfigError naming the file otherwise."""
    cert, key = _read_cert(cert_path), _read_key(key_path)
    if not _matches(cert, key):
        raise ConfigError(f"{key_path}: not the private key of {cert_path}")
    return cert


def serving_files(folder: str | Path) -> CertFiles:
    """The webhook's serving pair in `folder`, made (with a CA) only where neither file exists;
    a given pair is checked, never replaced (see the module's docstring)."""
    files = CertFiles(Path(folder))
    _half_pair(files.tls_cert, files.tls_key)
    if not files.tls_cert.exists():
        return issue(files.folder)
    check_pair(files.tls_cert, files.tls_key)
    return files


def _load_or_make_ca(
    folder: Path, days: int
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = folder / CA_CERT, folder / CA_KEY
    _half_pair(cert_path, key_path)
    if cert_path.exists():
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise ConfigError(
                f"{folder}: the existing CA cannot be read: {_why(exc)}; it is never replaced"
            ) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"{key_path}: expected an EC private key")
        if not _matches(cert, key):
            raise ConfigError(f"{key_path}: not the private key of {cert_path}")
        return cert, key
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hcs-webhook-ca")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=max(days, 3650)))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(key_path, _key_pem(key), 0o600)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert, key


def issue(
    folder: str | Path, service: str = "hcs-webhook", namespace: str = "hcs-system", days: int = 365
) -> CertFiles:
    """Write ca.crt/ca.key (reused if present) and a fresh tls.crt/tls.key into `folder`."""
    if days < 1:
        raise ConfigError(f"--days: {days} must be at least 1")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = _load_or_make_ca(out, days)
    key = ec.generate_private_key(ec.SECP256R1())
    names = service_names(service, namespace)
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[2])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(n) for n in names]
                + [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write(out / TLS_KEY, _key_pem(key), 0o600)
    _write(out / TLS_CERT, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return CertFiles(out)


def renewal_reason(
    folder: str | Path,
    service: str,
    namespace: str,
    renew_before: dt.timedelta,
    now: dt.datetime | None = None,
) -> str | None:
    """Why the serving certificate in `folder` must be issued again (missing, unreadable, not
    signed by ca.crt, missing one of the service's names, or expiring within `renew_before`);
    None when it can stay."""
    files = CertFiles(Path(folder))
    if not (files.tls_cert.exists() and files.tls_key.exists() and files.ca_cert.exists()):
        return "no certificate yet"
    try:
        cert = x509.load_pem_x509_certificate(files.tls_cert.read_bytes())
        ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        return f"{files.tls_cert} is unreadable or not signed by {files.ca_cert} ({exc})"
    try:
        sans = set(
            cert.extensions.get_extension_for_class(
                x509.SubjectAlternativeName
            ).value.get_values_for_type(x509.DNSName)
        )
    except x509.ExtensionNotFound:
        sans = set()
    missing = [n for n in service_names(service, namespace) if n not in sans]
    if missing:
        return f"{files.tls_cert} does not name {', '.join(missing)}"
    left = cert.not_valid_after_utc - (now or dt.datetime.now(dt.UTC))
    if left <= renew_before:
        return f"{files.tls_cert} expires {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    return None


def ca_bundle(folder: str | Path) -> str:
    """The webhook configuration's `caBundle`: base64 of the CA certificate PEM."""
    return base64.b64encode((Path(folder) / CA_CERT).read_bytes()).decode()


WEBHOOK_COUNT = 1
"""Webhooks in manifests/webhook-configuration.yaml (a test holds the two equal)."""


def ca_bundle_patch(folder: str | Path) -> list[dict[str, str]]:
    """The JSON patch that puts the CA into every webhook of the configuration."""
    bundle = ca_bundle(folder)
    return [
        {"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": bundle}
        for i in range(WEBHOOK_COUNT)
    ]
