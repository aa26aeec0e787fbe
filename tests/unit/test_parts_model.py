"""Jobs made of parts: the daemon's JobSpec (JSON and TOML) and the simulator's ``[jobs.parts]`` mix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError
from worlds import tiny_scenario

from greenferry.adapters.local_api import JobValidationError, validate_job_spec
from greenferry.commands.jobs import load_job_spec
from greenferry.core.jobs import MAX_JOB_PARTS, JobInfo, JobSpec, JobState
from greenferry.errors import ConfigError
from greenferry.hardware_profiles import get_profile
from greenferry.sim.scenario import build_world, load_scenario


def _spec(**fields: Any) -> dict[str, Any]:
    return {"name": "dp-1", "command": ["python", "train.py"], **fields}


def _problems(data: object) -> dict[str, str]:
    with pytest.raises(JobValidationError) as caught:
        validate_job_spec(data)
    return dict(caught.value.fields)


# --- JobSpec ------------------------------------------------------------------------------------------


def test_a_job_without_parts_is_one_movable_part_and_its_json_is_unchanged() -> None:
    spec = validate_job_spec(_spec(checkpoint_size_bytes=10**9))
    assert spec.parts is None
    assert spec.part_state_bytes == (10**9,)
    assert spec.part_pinned == (False,)
    assert spec.moves_whole
    document = json.loads(spec.model_dump_json())
    assert "parts" not in document  # older peers forbid unknown fields
    assert JobSpec.model_validate_json(spec.model_dump_json()) == spec


def test_parts_expand_to_workers_and_fill_gpu_count_and_checkpoint_size() -> None:
    spec = validate_job_spec(
        _spec(parts=[{"workers": 3, "state_bytes": 40 * 10**9}, {"state_bytes": 10**9, "pinned": True}])
    )
    assert spec.gpu_count == 4
    assert spec.checkpoint_size_bytes == 121 * 10**9
    assert spec.part_state_bytes == (40 * 10**9,) * 3 + (10**9,)
    assert spec.part_pinned == (False, False, False, True)
    assert not spec.moves_whole  # a pinned worker: the job never moves whole
    again = JobSpec.model_validate_json(spec.model_dump_json())
    assert again == spec
    info = JobInfo(job_id="dp-1", spec=spec, state=JobState.PENDING, node="edge-1", epoch=0)
    assert JobInfo.model_validate_json(info.model_dump_json()) == info


def test_explicit_totals_that_agree_are_accepted() -> None:
    spec = validate_job_spec(
        _spec(gpu_count=2, checkpoint_size_bytes=30, parts=[{"state_bytes": 10}, {"state_bytes": 20}])
    )
    assert spec.part_state_bytes == (10, 20)
    assert spec.moves_whole


@pytest.mark.parametrize(
    ("parts", "extra", "field", "says"),
    [
        ([{"workers": 0, "state_bytes": 1}], {}, "parts[0].workers", "greater than or equal to 1"),
        ([{"state_bytes": -1}], {}, "parts[0].state_bytes", "greater than or equal to 0"),
        ([{"state_bytes": 2**51}], {}, "parts[0].state_bytes", "less than or equal"),
        ([{"state_bytes": 1, "pinned": True}], {}, "parts", "every worker is pinned"),
        (
            [{"workers": 2, "state_bytes": 1, "pinned": True}, {"state_bytes": 1, "pinned": True}],
            {},
            "parts",
            "every worker is pinned",
        ),
        (
            [{"workers": 40, "state_bytes": 1}, {"workers": 30, "state_bytes": 1}],
            {},
            "parts",
            f"70 workers in all (limit {MAX_JOB_PARTS})",
        ),
        ([{"state_bytes": 1}] * (MAX_JOB_PARTS + 1), {}, "parts", "at most 64"),
        ([], {}, "parts", "at least 1"),
        (
            [{"workers": 3, "state_bytes": 1}],
            {"gpu_count": 2},
            "parts",
            "3 workers (one GPU each) but gpu_count is 2",
        ),
        (
            [{"state_bytes": 5}],
            {"checkpoint_size_bytes": 6},
            "parts",
            "the workers' state totals 5 bytes but checkpoint_size_bytes is 6",
        ),
        ([{"state_bytes": 1, "size": 2}], {}, "parts[0].size", "unknown field"),
        ([{"state_bytes": "10"}], {}, "parts[0].state_bytes", "valid integer"),
        ([{"state_bytes": 1.5}], {}, "parts[0].state_bytes", "valid integer"),
        ([{"state_bytes": True}], {}, "parts[0].state_bytes", "valid integer"),
        ([{"state_bytes": 1, "workers": "2"}], {}, "parts[0].workers", "valid integer"),
        ([{"state_bytes": 1, "pinned": "yes"}], {}, "parts[0].pinned", "valid boolean"),
        ([{"workers": 2}], {}, "parts[0].state_bytes", "required"),
        ([7], {}, "parts[0]", "valid dictionary"),
        ("4x40GB", {}, "parts", "valid list"),
        ({"state_bytes": 1}, {}, "parts", "valid list"),
    ],
)
def test_malformed_parts_name_the_field(parts: object, extra: dict[str, Any], field: str, says: str) -> None:
    problems = _problems(_spec(parts=parts, **extra))
    assert field in problems, problems
    assert says in problems[field], problems
    # Only the parts are wrong: no distracting "checkpoint_size_bytes is required".
    assert "checkpoint_size_bytes" not in problems


def test_null_parts_means_none_and_still_needs_a_checkpoint_size() -> None:
    assert validate_job_spec(_spec(parts=None, checkpoint_size_bytes=5)).parts is None
    assert "checkpoint_size_bytes" in _problems(_spec(parts=None))


def test_a_deeply_nested_or_huge_parts_value_is_refused_without_crashing() -> None:
    nested: object = {"state_bytes": 1}
    for _ in range(30):
        nested = [nested]
    assert "parts[0]" in _problems(_spec(parts=nested))
    with pytest.raises(ValidationError):
        JobSpec.model_validate(_spec(parts=[{"state_bytes": 1}] * 100_000))


def test_toml_and_json_spec_files_with_parts(tmp_path: Path) -> None:
    toml = tmp_path / "dp.toml"
    toml.write_text(
        'name = "dp-1"\ncommand = ["python", "train.py"]\n'
        "[[parts]]\nworkers = 2\nstate_bytes = 4_000_000_000\n"
        "[[parts]]\nstate_bytes = 1_000\npinned = true\n",
        encoding="utf-8",
    )
    spec = load_job_spec(toml)
    assert spec.part_state_bytes == (4 * 10**9, 4 * 10**9, 1000)
    assert spec.part_pinned == (False, False, True)
    as_json = tmp_path / "dp.json"
    as_json.write_text(spec.model_dump_json(), encoding="utf-8")
    assert load_job_spec(as_json) == spec
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "dp-1"\ncommand = ["x"]\n[[parts]]\nworkers = -3\nstate_bytes = 1\n', "utf-8")
    with pytest.raises(JobValidationError) as caught:
        load_job_spec(bad)
    assert "parts[0].workers" in str(caught.value)
    assert str(bad) in str(caught.value)


# --- the simulator's job mix --------------------------------------------------------------------------

PARTS = """
[jobs.parts]
workers = [2, 3]
worker_checkpoint = ["10GB", "40GB"]
pinned = 1
cross_site_efficiency = 0.7
"""


def test_jobs_parts_draws_workers_states_and_leaves_the_rest_of_the_mix(tmp_path: Path) -> None:
    plain, base = load_scenario(tiny_scenario(tmp_path, "tiny-plain", jobs=6))
    with_parts, _ = load_scenario(
        tiny_scenario(tmp_path, "tiny-parts", jobs=6), overrides=[f"jobs.parts={_inline(PARTS)}"]
    )
    a100 = get_profile("a100-80gb")
    for seed in (0, 1):
        before = build_world(plain, base, seed).jobs
        after = build_world(with_parts, base, seed).jobs
        for one, dp in zip(before, after, strict=True):
            assert (one.arrival_step, one.work_steps, one.home_site, one.profile) == (
                dp.arrival_step,
                dp.work_steps,
                dp.home_site,
                dp.profile,
            )
            assert one.parts is None
            parts = dp.parts
            assert parts is not None
            assert 2 <= parts.n_parts <= 3
            assert parts.pinned == (True,) + (False,) * (parts.n_parts - 1)
            assert parts.cross_site_efficiency == 0.7
            assert all(10e9 <= size <= 40e9 for size in parts.state_bytes)
            assert dp.checkpoint_bytes == pytest.approx(sum(parts.state_bytes))
            assert dp.power_w == pytest.approx(parts.n_parts * (a100.train_power_w + a100.host_power_w))
            assert dp.slots == parts.n_parts


def test_jobs_parts_share_mixes_one_part_jobs_in(tmp_path: Path) -> None:
    spec, base = load_scenario(
        tiny_scenario(tmp_path, "tiny-share", jobs=40), overrides=["jobs.parts={share = 0.5}"]
    )
    kinds = [job.parts is None for job in build_world(spec, base, 0).jobs]
    assert 5 < sum(kinds) < 35
    one_part = [job for job in build_world(spec, base, 0).jobs if job.parts is None]
    assert all(job.slots == 1 and job.moves_whole for job in one_part)


def _inline(table: str) -> str:
    """A ``[jobs.parts]`` body as a TOML inline table."""
    items = [line.strip() for line in table.strip().splitlines()[1:]]
    return "{" + ", ".join(items) + "}"


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("jobs.parts={workers = [0, 2]}", "at least one worker"),
        ("jobs.parts={workers = [3, 2]}", "reversed"),
        ("jobs.parts={workers = [2, 65]}", "at most 64 workers"),
        ("jobs.parts={workers = [2, 3], pinned = 2}", "pins every worker"),
        ("jobs.parts={pinned = -1}", "jobs.parts.pinned"),
        ('jobs.parts={worker_checkpoint = ["40GB", "10GB"]}', "0 < low <= high"),
        ('jobs.parts={worker_checkpoint = ["-1GB", "10GB"]}', "jobs.parts.worker_checkpoint"),
        ('jobs.parts={worker_checkpoint = ["big", "10GB"]}', "jobs.parts.worker_checkpoint"),
        ("jobs.parts={cross_site_efficiency = 0}", "jobs.parts.cross_site_efficiency"),
        ("jobs.parts={cross_site_efficiency = 1.5}", "jobs.parts.cross_site_efficiency"),
        ("jobs.parts={share = 2}", "jobs.parts.share"),
        ("jobs.parts={workers = [2, 5]}", "needs as many GPU slots at its home site"),
        ("jobs.parts={state = 1}", "jobs.parts.state"),
        ('jobs.parts="4x40GB"', "jobs.parts"),
        ("jobs.parts={workers = 4}", "jobs.parts.workers"),
    ],
)
def test_malformed_jobs_parts_name_the_field(tmp_path: Path, override: str, says: str) -> None:
    path = tiny_scenario(tmp_path, "tiny-bad", gpu_slots=4)
    with pytest.raises(ConfigError) as err:
        load_scenario(path, overrides=[override])
    assert says in str(err.value), str(err.value)
    assert "tiny-bad.toml" in str(err.value)


def test_isolated_jobs_may_have_more_workers_than_a_site_has_slots(tmp_path: Path) -> None:
    path = tiny_scenario(tmp_path, "tiny-iso", gpu_slots=2)
    spec, base = load_scenario(path, overrides=["jobs.isolated=true", "jobs.parts={workers = [3, 3]}"])
    assert all(job.slots == 3 for job in build_world(spec, base, 0).jobs)
    assert np.isfinite([job.checkpoint_bytes for job in build_world(spec, base, 0).jobs]).all()
