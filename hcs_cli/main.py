"""The `hcs` command: extender, webhook, serve, agent, device-plugin, controller, certs,
simulate, explain, validate. One module per command group (`hcs_cli.servers`, `.node`,
`.controller`, `.certificates`, `.offline`); shared flags in `hcs_cli.options`. (The
live-cluster views are `kubectl hcs`, `hcs_cli.kubectl`.)"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from hcs import __version__
from hcs.errors import HcsError
from hcs.vendors import load_vendor_table
from hcs_cli import certificates, controller, node, offline, servers
from hcs_cli.options import LOG_FORMAT, reader_left


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hcs",
        description="HCS, the Hetero-Compute-Router: vendor-neutral accelerator scheduling "
        "for Kubernetes.",
        epilog="On a live cluster, `kubectl hcs` (top nodes, top quota, explain pod, simulate) "
        "shows what is used and free and why a pod waits.",
    )
    parser.add_argument("--version", action="version", version=f"hcs {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    servers.add_parsers(sub)
    node.add_parsers(sub)
    controller.add_parsers(sub)
    certificates.add_parsers(sub)
    offline.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    LOG_FORMAT[0] = getattr(args, "log_format", "text")
    try:
        vendors = load_vendor_table(getattr(args, "vendor_config", None))
        code: int = args.run(args, vendors)
        return code
    except BrokenPipeError:
        return reader_left()
    except HcsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
