"""`hcs certs --renew-before` keeps a good certificate and replaces one that is expiring, wrong
or foreign; `--print-ca-patch` is the one command that puts the CA into the webhook config."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import jsonpatch
import pytest
import trustme
import yaml

from certs import ca_bundle, issue, renewal_reason
from hcs_cli.main import main

ROOT = Path(__file__).resolve().parents[2]
DAY = dt.timedelta(days=1)


def test_a_fresh_certificate_stays_until_the_window_reaches_its_expiry(tmp_path: Path) -> None:
    assert renewal_reason(tmp_path, "hcs-webhook", "hcs-system", DAY) == "no certificate yet"
    issue(tmp_path, days=90)
    assert renewal_reason(tmp_path, "hcs-webhook", "hcs-system", 30 * DAY) is None
    later = dt.datetime.now(dt.UTC) + 61 * DAY  # 29 days left
    reason = renewal_reason(tmp_path, "hcs-webhook", "hcs-system", 30 * DAY, now=later)
    assert reason is not None and "expires" in reason


def test_another_service_or_a_foreign_signer_means_renewal(tmp_path: Path) -> None:
    issue(tmp_path, days=90)
    reason = renewal_reason(tmp_path, "other", "hcs-system", DAY)
    assert reason is not None and "does not name other, other.hcs-system," in reason
    foreign = trustme.CA().issue_cert("hcs-webhook.hcs-system.svc")
    foreign.cert_chain_pems[0].write_to_path(str(tmp_path / "tls.crt"))
    reason = renewal_reason(tmp_path, "hcs-webhook", "hcs-system", DAY)
    assert reason is not None and "not signed by" in reason


def test_the_command_keeps_then_renews_with_the_same_ca(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "certs")
    assert main(["certs", "--out", out, "--renew-before", "30"]) == 0
    assert "no certificate yet" in capsys.readouterr().out
    first, bundle = (tmp_path / "certs" / "tls.crt").read_bytes(), ca_bundle(out)
    assert main(["certs", "--out", out, "--renew-before", "30"]) == 0
    assert "kept" in capsys.readouterr().out
    assert (tmp_path / "certs" / "tls.crt").read_bytes() == first
    assert main(["certs", "--out", out, "--renew-before", "400"]) == 0  # 365-day certificate
    assert "expires" in capsys.readouterr().out
    assert (tmp_path / "certs" / "tls.crt").read_bytes() != first
    assert ca_bundle(out) == bundle  # the caBundle in the cluster stays valid


def test_a_negative_window_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["certs", "--out", str(tmp_path), "--renew-before", "-1"]) == 2
    assert "--renew-before: -1 must be 0 or more days" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_the_ca_patch_fills_every_webhook_of_the_shipped_configuration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["certs", "--out", str(tmp_path), "--print-ca-patch"]) == 0
    captured = capsys.readouterr()
    assert "wrote" in captured.err  # the stdout is only the patch
    patch = json.loads(captured.out)
    config = yaml.safe_load((ROOT / "manifests" / "webhook-configuration.yaml").read_text())
    patched = jsonpatch.apply_patch(config, patch)
    bundles = [hook["clientConfig"].get("caBundle") for hook in patched["webhooks"]]
    assert bundles == [ca_bundle(tmp_path)] * len(config["webhooks"])
