"""`hcs certs`: the webhook's CA and serving certificate."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from hcs.errors import ConfigError
from hcs.vendors import VendorTable


def add_parsers(sub: Any) -> None:
    """The certs command."""
    p = sub.add_parser(
        "certs",
        help="make the webhook's CA and serving certificate",
        description="Write ca.crt/ca.key (an existing CA is reused) and tls.crt/tls.key with "
        "the service's DNS names, localhost and 127.0.0.1 as SANs. Keys get mode 0600.",
    )
    p.add_argument("--service", default="hcs-webhook", help="(default %(default)s)")
    p.add_argument("--namespace", default="hcs-system", help="(default %(default)s)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the files")
    p.add_argument(
        "--days",
        type=int,
        default=365,
        metavar="N",
        help="serving certificate validity in days (default %(default)s)",
    )
    p.add_argument(
        "--renew-before",
        type=int,
        metavar="DAYS",
        help="keep a tls.crt that is signed by ca.crt, names the service and is valid for more "
        "than DAYS days; issue a new one otherwise (for a CronJob; default: always issue)",
    )
    printed = p.add_mutually_exclusive_group()
    printed.add_argument(
        "--print-ca-bundle",
        action="store_true",
        help="print the base64 caBundle for the MutatingWebhookConfiguration "
        "(issuing the files first only if there is no CA yet)",
    )
    printed.add_argument(
        "--print-ca-patch",
        action="store_true",
        help="print the JSON patch that puts the caBundle into every HCS webhook: "
        'kubectl patch mutatingwebhookconfiguration hcs-webhook --type=json -p "$(hcs certs '
        '--out DIR --print-ca-patch)"',
    )
    p.set_defaults(run=run_certs)


def run_certs(args: argparse.Namespace, vendors: VendorTable) -> int:
    from certs import ca_bundle, ca_bundle_patch, issue, renewal_reason, service_names

    out = Path(args.out)
    printing = args.print_ca_bundle or args.print_ca_patch
    say = sys.stderr if printing else sys.stdout  # stdout carries only what was asked to print
    if args.renew_before is not None and args.renew_before < 0:
        raise ConfigError(f"--renew-before: {args.renew_before} must be 0 or more days")
    if args.renew_before is not None:
        window = dt.timedelta(days=args.renew_before)
        reason = renewal_reason(out, args.service, args.namespace, window)
    elif printing:
        reason = None if (out / "ca.crt").exists() else "no CA yet"
    else:
        reason = "asked to issue"
    if reason is None and args.renew_before is not None:
        print(f"kept {out / 'tls.crt'}: valid for more than {args.renew_before} days", file=say)
    elif reason is not None:
        try:
            files = issue(out, args.service, args.namespace, args.days)
        except OSError as exc:
            raise ConfigError(
                f"--out {out}: cannot write the certificates there ({exc.strerror})"
            ) from None
        print(
            f"wrote {files.ca_cert}, {files.tls_cert}, {files.tls_key} ({reason}; SANs: "
            f"{', '.join(service_names(args.service, args.namespace))}, 127.0.0.1)",
            file=say,
        )
    if args.print_ca_bundle:
        print(ca_bundle(out))
    if args.print_ca_patch:
        print(json.dumps(ca_bundle_patch(out)))
    return 0
