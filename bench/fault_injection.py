"""Seeded randomized fault injection over real in-process daemons, printed as JSON (never asserted).

Each trial (greenferry.testing.faults) runs nodes a and b with the tiny fault job, moves the job a -> b while
its seeded plan crashes a node at a protocol step, drops or delays requests, partitions the link, damages
chunks, races a second offer, fills the destination's disk or replays the commit; then it checks: at most
one job process at every observation and exactly one at the end, no checkpoint lost, the job running again
within the deadline plus 60 s. Prints the trials, the faults by kind, the invariant violations (with the
seeds that reproduce them), recovery time p50/p99 and the wall time.

Usage: python bench/fault_injection.py [--trials 1000 | --quick] [--seed N] [--concurrency 4] [--keep DIR]
Reproduce one trial: GREENFERRY_FAULT_SEED=<seed> GREENFERRY_FAULT_TRIALS=1 pytest
tests/integration/test_fault_injection.py, or --seed <seed> --trials 1 here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from greenferry.testing.faults import TrialResult, run_trials, summarize

DEFAULT_SEED = 7_000_000


async def run(args: argparse.Namespace) -> dict[str, Any]:
    trials = 50 if args.quick else args.trials

    def progress(result: TrialResult) -> None:
        if result.violations:
            print(f"FAIL seed {result.seed} ({result.plan}): {result.violations}", file=sys.stderr)
        elif args.verbose:
            print(
                f"ok seed {result.seed} {result.outcome} {result.wall_s:.2f} s: {result.plan}",
                file=sys.stderr,
            )

    with tempfile.TemporaryDirectory(prefix="gf-faults-") as scratch:
        work = Path(args.keep) if args.keep else Path(scratch)
        started = time.monotonic()
        results = await run_trials(
            range(args.seed, args.seed + trials),
            work,
            concurrency=args.concurrency,
            keep=bool(args.keep),
            on_result=progress,
        )
        summary = summarize(results, time.monotonic() - started)
    summary["seed"] = args.seed
    summary["concurrency"] = args.concurrency
    summary["violations"] = [
        {"seed": r.seed, "plan": r.plan, "violations": r.violations, "repro": r.repro()}
        for r in results
        if r.violations
    ]
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="50 trials")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="the first trial's seed")
    parser.add_argument("--concurrency", type=int, default=4, help="trials at once")
    parser.add_argument("--keep", help="keep every trial's directory under this one")
    parser.add_argument("--verbose", action="store_true", help="one line per trial on stderr")
    args = parser.parse_args()
    logging.basicConfig(level=logging.CRITICAL)
    print(json.dumps(asyncio.run(run(args)), indent=2))


if __name__ == "__main__":
    main()
