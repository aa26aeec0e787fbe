"""``greenferry certs``: create the cluster CA and issue node certificates for mutual TLS between peers."""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path
from typing import Any

from greenferry.errors import ConfigError

__all__ = ["DEFAULT_CA_DIR", "register", "run_init", "run_issue"]

DEFAULT_CA_DIR = Path("greenferry-ca")


def register(subparsers: Any) -> None:
    """Add ``certs init`` and ``certs issue`` to the CLI's subparsers."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "certs",
        help="create the cluster CA and node certificates (mutual TLS between peers)",
        description="Create one CA for the fleet and a certificate per node; peers accept only each other. "
        "See docs/security.md.",
    )
    actions = parser.add_subparsers(dest="certs_action", metavar="ACTION")

    init_parser = actions.add_parser(
        "init",
        help="create the cluster CA (ca.crt, ca.key)",
        description="Create the cluster CA: an EC P-256 key (ca.key, mode 0600) and a self-signed CA "
        "certificate (ca.crt). Keep ca.key off the nodes; only ca.crt is distributed.",
    )
    init_parser.add_argument(
        "--dir",
        type=Path,
        default=DEFAULT_CA_DIR,
        metavar="DIR",
        help=f"CA directory (default: {DEFAULT_CA_DIR})",
    )
    init_parser.add_argument("--days", type=int, default=3650, metavar="N", help="validity (default: 3650)")
    init_parser.add_argument(
        "--force",
        action="store_true",
        help="replace an existing CA: every node certificate it signed stops being trusted",
    )
    init_parser.set_defaults(func=run_init)

    issue_parser = actions.add_parser(
        "issue",
        help="issue a node certificate signed by the cluster CA",
        description="Issue NODE's certificate (CN=NODE, URI SAN greenferry://node/NODE, serverAuth and "
        "clientAuth) and key, and copy ca.crt next to them: the directory the node's [peer.tls] points at.",
    )
    issue_parser.add_argument("node", metavar="NODE", help="the node's name, as in its config")
    issue_parser.add_argument(
        "--dir",
        type=Path,
        default=DEFAULT_CA_DIR,
        metavar="DIR",
        help=f"CA directory (default: {DEFAULT_CA_DIR})",
    )
    issue_parser.add_argument(
        "--host",
        action="append",
        dest="hosts",
        metavar="H",
        help="a DNS name or IP address peers use to reach the node; repeat for each (default: NODE)",
    )
    issue_parser.add_argument(
        "--out", type=Path, metavar="DIR", help="where the node's files go (default: DIR/nodes/NODE)"
    )
    issue_parser.add_argument("--days", type=int, default=825, metavar="N", help="validity (default: 825)")
    issue_parser.add_argument(
        "--force", action="store_true", help="replace the node's existing certificate and key (rotation)"
    )
    issue_parser.set_defaults(func=run_issue)

    def usage(_args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=usage)


def run_init(args: argparse.Namespace) -> int:
    """Create the CA and print the files written; returns 0.

    Raises:
        ConfigError: a CA exists there (without --force), bad --days, or the files cannot be written.
    """
    from greenferry.adapters.pki import certificate_summary, init_ca

    paths = init_ca(args.dir, days=args.days, force=args.force)
    summary = certificate_summary(paths.cert)
    print(f"wrote {paths.key} (CA private key, mode 0600: keep it off the nodes, and backed up)")
    print(
        f"wrote {paths.cert} (CA certificate {summary.common_name!r}, valid until {_utc(summary.not_after)})"
    )
    print(f"next: greenferry certs issue NODE --dir {args.dir} --host NODE_ADDRESS")
    return 0


def run_issue(args: argparse.Namespace) -> int:
    """Issue a node certificate and print the files written; returns 0.

    Raises:
        ConfigError: bad NODE, --host or --days, no CA in --dir, or the node's files exist (without --force).
    """
    from greenferry.adapters.pki import certificate_summary, issue_node_cert, validate_node_name

    node: str = validate_node_name(args.node)
    hosts: list[str] = args.hosts or [_default_host(node)]
    out_dir: Path = args.out if args.out is not None else args.dir / "nodes" / node
    paths = issue_node_cert(args.dir, node, hosts=hosts, out_dir=out_dir, days=args.days, force=args.force)
    summary = certificate_summary(paths.cert)
    print(f"wrote {paths.key} (node private key, mode 0600)")
    print(
        f"wrote {paths.cert} (node certificate CN={summary.common_name}, {', '.join(summary.sans)}; "
        f"valid until {_utc(summary.not_after)})"
    )
    print(f"wrote {paths.ca} (cluster CA certificate)")
    print(
        f"next: copy {out_dir} to node {node} and point its [peer.tls] ca_file, cert_file and key_file at "
        f"{paths.ca.name}, {paths.cert.name} and {paths.key.name}"
    )
    return 0


def _default_host(node: str) -> str:
    from greenferry.adapters.pki import is_dns_name

    if not is_dns_name(node):
        raise ConfigError(
            f"node name {node!r} is not a DNS name: give the names or addresses peers use to reach it "
            "with --host (e.g. --host gpu-box.lan --host 10.0.0.7)"
        )
    return node


def _utc(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
