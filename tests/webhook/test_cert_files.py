"""A certificate the webhook was given is never replaced: an incomplete pair or a file that does
not parse stops the start with one line naming the file, and nothing in the folder changes.
New files are made only where none exist. The webhook is started as the process the Deployment
runs (`hcs webhook --cert-dir`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import trustme

from certs import issue, serving_files
from hcs.errors import ConfigError
from hcs_cli.main import main

ROOT = Path(__file__).resolve().parents[2]
INVENTORY = str(ROOT / "examples" / "inventory")


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def start_webhook(cert_dir: Path) -> subprocess.CompletedProcess[str]:
    """`hcs webhook` as the Deployment runs it; a refused start exits before it listens (port
    1 is never reached)."""
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from hcs_cli.main import main; sys.exit(main())",
            *("webhook", "--inventory", INVENTORY, "--cert-dir", str(cert_dir)),
            *("--host", "127.0.0.1", "--port", "1"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def broken_folders(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Folder -> (the file the error must name, what it must say)."""
    out: dict[str, tuple[Path, str]] = {}

    def folder(name: str) -> Path:
        f = tmp_path / name
        issue(f)
        return f

    cert_only = folder("cert-only")
    (cert_only / "tls.key").unlink()
    out["cert-only"] = (cert_only / "tls.key", "missing beside tls.crt")
    key_only = folder("key-only")
    (key_only / "tls.crt").unlink()
    out["key-only"] = (key_only / "tls.crt", "missing beside tls.key")
    garbage_cert = folder("garbage-cert")
    (garbage_cert / "tls.crt").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n")
    out["garbage-cert"] = (garbage_cert / "tls.crt", "not a PEM certificate")
    garbage_key = folder("garbage-key")
    (garbage_key / "tls.key").write_bytes(b"")
    out["garbage-key"] = (garbage_key / "tls.key", "not an unencrypted PEM private key")
    mismatched = folder("mismatched")
    other = trustme.CA().issue_cert("hcs-webhook.hcs-system.svc")
    other.private_key_pem.write_to_path(str(mismatched / "tls.key"))
    out["mismatched"] = (mismatched / "tls.key", "not the private key of")
    # No serving pair yet, but half a CA: making a new CA would not match the caBundle.
    half_ca = folder("half-ca")
    for name in ("tls.crt", "tls.key", "ca.key"):
        (half_ca / name).unlink()
    out["half-ca"] = (half_ca / "ca.key", "missing beside ca.crt")
    return out


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    return broken_folders(tmp_path_factory.mktemp("certs"))


@pytest.mark.parametrize(
    "case", ["cert-only", "key-only", "garbage-cert", "garbage-key", "mismatched", "half-ca"]
)
def test_a_broken_given_pair_is_refused_and_left_as_it_was(
    case: str, folders: dict[str, tuple[Path, str]]
) -> None:
    bad, says = folders[case]
    before = snapshot(bad.parent)
    with pytest.raises(ConfigError) as caught:
        serving_files(bad.parent)
    assert str(bad) in str(caught.value) and says in str(caught.value)
    assert snapshot(bad.parent) == before


@pytest.mark.parametrize("case", ["cert-only", "garbage-cert", "mismatched", "half-ca"])
def test_the_webhook_process_refuses_to_start_with_one_line_and_no_traceback(
    case: str, folders: dict[str, tuple[Path, str]]
) -> None:
    bad, says = folders[case]
    before = snapshot(bad.parent)
    done = start_webhook(bad.parent)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: InvalidConfig: ") and str(bad) in lines[0]
    assert says in lines[0] and "Traceback" not in done.stderr
    assert snapshot(bad.parent) == before


def test_hcs_certs_never_makes_a_new_ca_beside_half_of_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    issue(tmp_path)
    (tmp_path / "ca.key").unlink()
    before = snapshot(tmp_path)
    assert main(["certs", "--out", str(tmp_path), "--renew-before", "400"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'ca.key'}: missing beside ca.crt" in err
    assert snapshot(tmp_path) == before


def test_an_empty_folder_gets_a_new_pair_and_a_given_good_pair_is_kept(tmp_path: Path) -> None:
    made = serving_files(tmp_path / "new")
    assert made.tls_cert.exists() and made.tls_key.exists() and made.ca_cert.exists()
    # A pair from elsewhere (cert-manager's Secret: tls.crt, tls.key, ca.crt, no ca.key).
    given = tmp_path / "given"
    given.mkdir()
    ca = trustme.CA()
    leaf = ca.issue_cert("hcs-webhook.hcs-system.svc")
    leaf.cert_chain_pems[0].write_to_path(str(given / "tls.crt"))
    leaf.private_key_pem.write_to_path(str(given / "tls.key"))
    ca.cert_pem.write_to_path(str(given / "ca.crt"))
    before = snapshot(given)
    assert serving_files(given).tls_cert == given / "tls.crt"
    assert snapshot(given) == before
