"""The job state machine (core/jobs.py), every pair of states, and JobSpec against hostile input."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from greenferry.core.jobs import (
    ACTIVE_STATES,
    MAX_COMMAND_ARGS,
    MAX_ENV_VARS,
    TERMINAL_STATES,
    JobInfo,
    JobSpec,
    JobState,
    TransitionError,
    allowed_transitions,
    transition,
)

S = JobState

# Written out here, independently of the table in core/jobs.py: a change there must change this too.
EXPECTED: dict[JobState, set[JobState]] = {
    S.PENDING: {S.STARTING, S.MIGRATING, S.CANCELLED, S.FAILED},
    S.STARTING: {S.RUNNING, S.CHECKPOINTING, S.COMPLETED, S.FAILED, S.CANCELLED, S.PAUSED},
    S.RUNNING: {S.CHECKPOINTING, S.COMPLETED, S.FAILED, S.CANCELLED, S.PAUSED},
    S.CHECKPOINTING: {S.PAUSED, S.MIGRATING, S.COMPLETED, S.FAILED, S.CANCELLED},
    S.PAUSED: {S.STARTING, S.MIGRATING, S.CANCELLED, S.FAILED},
    S.MIGRATING: {S.MIGRATED, S.PAUSED, S.FAILED},
    S.MIGRATED: set(),
    S.COMPLETED: set(),
    S.FAILED: set(),
    S.CANCELLED: set(),
}

PAIRS = [(current, new) for current in JobState for new in JobState]


def test_the_expected_table_covers_every_state() -> None:
    assert set(EXPECTED) == set(JobState)
    assert len(PAIRS) == len(JobState) ** 2


@pytest.mark.parametrize(("current", "new"), PAIRS, ids=[f"{a.value}->{b.value}" for a, b in PAIRS])
def test_every_pair_is_allowed_or_raises(current: JobState, new: JobState) -> None:
    if new in EXPECTED[current]:
        assert transition(current, new) is new
        assert new in allowed_transitions(current)
    else:
        with pytest.raises(TransitionError) as caught:
            transition(current, new)
        assert current.value in str(caught.value)
        assert new.value in str(caught.value)
        assert new not in allowed_transitions(current)


def test_allowed_transitions_is_the_table() -> None:
    for state in JobState:
        assert allowed_transitions(state) == frozenset(EXPECTED[state])


def test_terminal_states_have_no_exits_and_say_so() -> None:
    assert {s for s, exits in EXPECTED.items() if not exits} == TERMINAL_STATES
    for state in TERMINAL_STATES:
        assert allowed_transitions(state) == frozenset()
        with pytest.raises(TransitionError, match="terminal"):
            transition(state, JobState.PENDING)


def test_no_state_moves_to_itself() -> None:
    for state in JobState:
        with pytest.raises(TransitionError):
            transition(state, state)


def test_active_states_are_live_and_not_terminal() -> None:
    assert ACTIVE_STATES.isdisjoint(TERMINAL_STATES)
    assert {S.STARTING, S.RUNNING, S.CHECKPOINTING} == ACTIVE_STATES


def _reachable(start: JobState) -> set[JobState]:
    seen = {start}
    frontier = [start]
    while frontier:
        for nxt in allowed_transitions(frontier.pop()):
            if nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    return seen


def test_every_state_is_reachable_from_pending() -> None:
    assert _reachable(S.PENDING) == set(JobState)


def test_every_state_can_still_end() -> None:
    for state in JobState:
        assert _reachable(state) & TERMINAL_STATES, state


def test_a_failed_migration_can_come_back_to_paused_and_run_again() -> None:
    state = S.RUNNING
    for new in (S.CHECKPOINTING, S.MIGRATING, S.PAUSED, S.STARTING, S.RUNNING, S.COMPLETED):
        state = transition(state, new)
    assert state is S.COMPLETED


# ----------------------------------------------------------------------------------- JobSpec


def _spec(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "train-1",
        "command": ["python", "train.py"],
        "checkpoint_size_bytes": 10**9,
    }
    return {**base, **overrides}


def _rejected(field: str, **overrides: Any) -> str:
    with pytest.raises(ValidationError) as caught:
        JobSpec.model_validate(_spec(**overrides))
    text = str(caught.value)
    assert field in text, text
    return text


def test_a_plain_spec_is_valid_with_defaults() -> None:
    spec = JobSpec.model_validate(_spec())
    assert spec.job_id == "train-1"
    assert spec.env == {}
    assert spec.working_dir is None
    assert spec.migratable is True


@pytest.mark.parametrize(
    "name", ["", "Train", "-train", "train_1", "../etc", "a/b", "a" * 64, "tr ain", "train\x00", "é"]
)
def test_bad_names_are_rejected(name: str) -> None:
    _rejected("name", name=name)


def test_names_at_the_limits_are_accepted() -> None:
    assert JobSpec.model_validate(_spec(name="a" * 63)).job_id == "a" * 63
    assert JobSpec.model_validate(_spec(name="0")).job_id == "0"


def test_nul_bytes_are_rejected_where_they_would_reach_exec() -> None:
    assert "command[1] contains NUL" in _rejected("command", command=["python", "tr\x00ain.py"])
    assert "NUL" in _rejected("env", env={"DATA": "a\x00b"})


@pytest.mark.parametrize("name", ["GREENFERRY_JOB_ID", "GREENFERRY_JOB_CONTROL_FD", "GREENFERRY_JOB_"])
def test_reserved_environment_names_are_rejected(name: str) -> None:
    assert "reserved" in _rejected("env", env={name: "1"})


@pytest.mark.parametrize("name", ["", "1ABC", "A-B", "A=B", "A B", "PATH\x00", "É"])
def test_invalid_environment_names_are_rejected(name: str) -> None:
    assert "not a valid environment variable name" in _rejected("env", env={name: "1"})


def test_environment_size_limits() -> None:
    _rejected("env", env={f"V{i}": "x" for i in range(MAX_ENV_VARS + 1)})
    _rejected("env", env={"BIG": "x" * 32769})
    assert (
        len(JobSpec.model_validate(_spec(env={f"V{i}": "x" for i in range(MAX_ENV_VARS)})).env)
        == MAX_ENV_VARS
    )


@pytest.mark.parametrize("path", ["relative/dir", "./here", "..", "~/jobs", ""])
def test_working_dir_must_be_absolute(path: str) -> None:
    assert "absolute" in _rejected("working_dir", working_dir=path)


def test_an_absolute_working_dir_is_accepted() -> None:
    assert JobSpec.model_validate(_spec(working_dir="/srv/jobs/a")).working_dir == "/srv/jobs/a"


def test_huge_and_empty_argv_are_rejected() -> None:
    _rejected("command", command=["x"] * (MAX_COMMAND_ARGS + 1))
    _rejected("command", command=["x" * 4097])
    _rejected("command", command=[])
    _rejected("command", command=["python", ""])
    _rejected("command", command="python train.py")
    assert len(JobSpec.model_validate(_spec(command=["x"] * MAX_COMMAND_ARGS)).command) == MAX_COMMAND_ARGS


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("gpu_count", -1),
        ("gpu_count", 65),
        ("power_w", 0),
        ("power_w", float("inf")),
        ("power_w", float("nan")),
        ("checkpoint_size_bytes", -1),
        ("checkpoint_size_bytes", 2**51),
        ("work_s", 0),
        ("checkpoint_timeout_s", 0),
        ("checkpoint_timeout_s", 3601),
        ("migratable", "perhaps"),
    ],
)
def test_numbers_out_of_range_are_rejected(field: str, value: object) -> None:
    _rejected(field, **{field: value})


def test_unknown_fields_are_rejected_and_specs_are_frozen() -> None:
    _rejected("shell", shell=True)
    spec = JobSpec.model_validate(_spec())
    with pytest.raises(ValidationError):
        spec.name = "other"  # type: ignore[misc]


def test_missing_required_fields_are_named() -> None:
    with pytest.raises(ValidationError, match="checkpoint_size_bytes"):
        JobSpec.model_validate({"name": "a", "command": ["x"]})


def test_job_info_must_match_its_spec() -> None:
    spec = JobSpec.model_validate(_spec())
    info = JobInfo(job_id="train-1", spec=spec, state=S.PENDING, node="n1", epoch=0)
    assert info.state is S.PENDING
    with pytest.raises(ValidationError, match="does not match"):
        JobInfo(job_id="train-2", spec=spec, state=S.PENDING, node="n1", epoch=0)
    with pytest.raises(ValidationError, match="epoch"):
        JobInfo(job_id="train-1", spec=spec, state=S.PENDING, node="n1", epoch=-1)


_json_leaf = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
_json = st.recursive(
    _json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_fields = st.sampled_from(
    [
        "name",
        "command",
        "env",
        "working_dir",
        "gpu_count",
        "power_w",
        "checkpoint_size_bytes",
        "migratable",
        "x",
    ]
)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(_fields, _json, max_size=9))
def test_arbitrary_input_either_validates_or_raises_a_validation_error(data: dict[str, Any]) -> None:
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError:
        return
    assert spec.command
    assert all("\x00" not in arg for arg in spec.command)
    assert not any(key.startswith("GREENFERRY_JOB_") for key in spec.env)
