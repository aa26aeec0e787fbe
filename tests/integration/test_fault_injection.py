"""Seeded randomized fault injection: real daemons move a real job while crashes, drops and partitions strike.

Every trial (greenferry.testing.faults) runs nodes a and b in this process over real HTTP, with the job as a
real subprocess, and draws its faults from its seed: a node crashing at a protocol step (restarted on the
same data directory, so recover() runs), lost requests and answers, partitions, delays past the deadline,
damaged chunks, a second offer, a full disk, a replayed commit. Each asserts: at most one job process at
every observation and exactly one at the end, at the owner; no checkpoint lost; the job running again
within the move's deadline plus 60 s. A failing trial prints the environment that runs it alone:

    GREENFERRY_FAULT_SEED=<seed> GREENFERRY_FAULT_TRIALS=1 pytest tests/integration/test_fault_injection.py

The named plans below are the trials that found bugs, kept as regression tests.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from greenferry.testing.faults import (
    ENV_SEED,
    ENV_TRIALS,
    FAULT_KINDS,
    NOMINAL_DEADLINE_S,
    NOMINAL_FENCE_S,
    Fault,
    FaultPlan,
    TrialResult,
    run_trials,
)

pytestmark = pytest.mark.integration

DEFAULT_SEED = 20_261_128
TRIALS = int(os.environ.get(ENV_TRIALS, "200"))
SEED = int(os.environ.get(ENV_SEED, str(DEFAULT_SEED)))
CONCURRENCY = 4  # trials at once: they wait on protocol timers far more than they compute


def _need_proc() -> None:
    if not Path("/proc/self/environ").exists():
        pytest.skip("the one-runner check reads the process table from /proc (Linux)")


def _report(results: list[TrialResult]) -> str:
    failed = [r for r in results if r.violations]
    lines = [f"{len(failed)} of {len(results)} trials broke an invariant:"]
    lines += [f"  {r.repro()}  # {r.plan}: {r.violations}" for r in failed]
    return "\n".join(lines)


def _print_failure(result: TrialResult) -> None:
    if result.violations:
        print(f"FAILED trial: {result.repro()}  # {result.plan}: {result.violations}")


async def test_seeded_fault_trials_keep_one_runner_and_every_checkpoint(tmp_path: Path) -> None:
    _need_proc()
    results = await run_trials(
        range(SEED, SEED + TRIALS), tmp_path, concurrency=CONCURRENCY, on_result=_print_failure
    )
    assert len(results) == TRIALS
    assert all(not r.violations for r in results), _report(results)
    assert all(r.max_runners == 1 for r in results)
    if TRIALS >= 200:  # the default run meets every kind of fault, and moves that commit and that abort
        fired = {kind for r in results for kind in r.kinds}
        assert fired == set(FAULT_KINDS) - {"none"}, fired
        assert {r.outcome for r in results} == {"moved", "stayed"}


async def _trials(tmp_path: Path, *plans: FaultPlan) -> list[TrialResult]:
    _need_proc()
    results = await run_trials(plans, tmp_path, concurrency=len(plans))
    assert all(not r.violations for r in results), _report(results)
    assert all(r.max_runners == 1 for r in results)
    return results


_SOURCE_GONE_PAST_ITS_FENCE = Fault(
    "crash", node="src", point="commit", when="handled", restart_after_s=NOMINAL_FENCE_S + 2
)


async def test_a_destination_in_doubt_keeps_the_job_stopped_past_the_sources_fence(tmp_path: Path) -> None:
    """The source dies once b started the job and comes back after its fence time; its abort to b is lost.

    Found two bugs: b's decision loop restarted the job b had stopped for want of a confirmation, so once
    the source rolled back (at its fence, assuming b had stopped it for good) both ran it until b next
    asked; and b kept the reservation of a migration it settled by asking, so it refused every later offer
    of the job as "already reserved" (the trial's clean move afterwards).
    """
    lost_abort = Fault("drop", node="src", point="abort", count=3)
    (result,) = await _trials(tmp_path, FaultPlan(0, (_SOURCE_GONE_PAST_ITS_FENCE, lost_abort)))
    assert result.outcome == "stayed"  # and the trial's clean move afterwards committed


async def test_a_move_after_a_rolled_back_commit_is_not_refused_or_undone(tmp_path: Path) -> None:
    """As above, with the abort delivered: then the trial's clean move to b must commit and stay there.

    Found two bugs: b kept the epoch the source rolled back from, so it refused every later offer of the
    job as stale (the source now resumes at that spent epoch); and b's doubt loop, still asking after the
    abort closed its migration, heard "aborted" and stopped the job a later move had brought to b (the
    loop's answers arrive late here, so that it acts after the later move).
    """
    late_answers = Fault("delay", node="dst", point="status", when="after", count=99, duration_s=1.5)
    faults = (_SOURCE_GONE_PAST_ITS_FENCE, late_answers)
    results = await _trials(tmp_path, FaultPlan(0, faults), FaultPlan(1, faults, pre_hop=True))
    assert [r.outcome for r in results] == ["stayed", "stayed"]


async def test_a_reservation_the_source_abandoned_is_dropped(tmp_path: Path) -> None:
    """The source gives up on a move during a partition and its abort is lost: b's slot comes back.

    Found: an expired reservation held b's slot, and its journal record stayed open, until some later offer
    happened to arrive.
    """
    partition = Fault("partition", point="prepare", duration_s=NOMINAL_DEADLINE_S + 2)
    (result,) = await _trials(tmp_path, FaultPlan(0, (partition,)))
    assert result.outcome == "stayed"


async def test_the_destination_dies_after_it_started_the_job_and_before_it_answered(tmp_path: Path) -> None:
    """The in-process twin of the netns kill -9 during restore: b restarts, asks, and runs it."""
    crash = Fault("crash", node="dst", point="commit", when="handled")
    await _trials(tmp_path, FaultPlan(0, (crash,)), FaultPlan(1, (crash,), pre_hop=True))
