"""An elastic job's c10d rendezvous store as its own process: ``python -m greenferry.elastic_store PORT``.

torchrun's c10d rendezvous keeps its state in a TCPStore that, by default, lives in whichever agent runs on
the endpoint's host, and dies when that node leaves the job. A daemon with ``host_store = true`` runs this
instead, so membership can change freely (docs/distributed.md). Needs torch (``greenferry[torch]``).

It prints ``rendezvous store listening on port N`` once it listens, and stops on SIGTERM or SIGINT. The
store listens on every interface and has no authentication: keep it on the cluster's private network.
"""

from __future__ import annotations

import signal
import sys

__all__ = ["main", "serve_rendezvous_store"]


def serve_rendezvous_store(port: int) -> int:
    """Host the store on ``port`` (0: any free one) until SIGTERM or SIGINT; returns the exit code."""
    import torch.distributed as dist

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    store = dist.TCPStore(  # type: ignore[attr-defined, unused-ignore]
        "0.0.0.0", port, is_master=True, wait_for_workers=False
    )
    print(f"rendezvous store listening on port {store.port}", flush=True)
    received = signal.sigwait({signal.SIGTERM, signal.SIGINT})
    print(f"rendezvous store: {signal.Signals(received).name}, stopping", flush=True)
    del store
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the port and serve."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not args[0].isdigit() or not 0 <= int(args[0]) <= 65535:
        print("usage: python -m greenferry.elastic_store PORT (0..65535)", file=sys.stderr)
        return 2
    try:
        return serve_rendezvous_store(int(args[0]))
    except ImportError as err:
        print(f"the rendezvous store needs torch: pip install 'greenferry[torch]' ({err})", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
