"""The demo view: DemoState from node statuses and job/migration hooks, and render(state) drawn to text."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json

import pytest
from rich.console import Console

from greenferry.demo.view import DemoState, LiveView, StatusCollector, render

T0 = dt.datetime(2022, 6, 6, tzinfo=dt.UTC).timestamp()


def _iso(time_s: float) -> str:
    return dt.datetime.fromtimestamp(time_s, dt.UTC).isoformat().replace("+00:00", "Z")


def _status(time_s: float, **fields: object) -> dict[str, object]:
    return {"state": "online", "time": _iso(time_s), **fields}


def make_state() -> DemoState:
    state = DemoState("greenferry demo")
    state.add_node("node-jp-tk", "JP-TK", "Asia/Tokyo")
    state.add_node("node-de-lu", "DE-LU", "Europe/Berlin")
    state.add_node("node-us-cal-ciso", "US-CAL-CISO", "America/Los_Angeles")
    return state


def text_of(state: DemoState, width: int = 120) -> str:
    console = Console(record=True, width=width, file=io.StringIO())
    console.print(render(state))
    return console.export_text()


def test_render_shows_each_site_with_its_local_time_surplus_signals_power_and_job() -> None:
    state = make_state()
    state.scenario, state.speedup = "global-8", 720.0
    state.start_s, state.end_s, state.now_s = T0, T0 + 86400, T0 + 21600  # 06:00 UTC, a quarter through
    state.on_status("node-jp-tk", _status(T0, surplus_w=2118.2, gpu_power_w=50.0, stale_signals=[]))
    state.on_status("node-de-lu", _status(T0, surplus_w=0.0, gpu_power_w=50.0, stale_signals=["production"]))
    state.on_status("node-us-cal-ciso", {"state": "offline", "reason": "connection lost", "time": _iso(T0)})
    state.on_job_event("node-jp-tk", "job-1", time_s=T0, step=1234, progress=0.25)
    text = text_of(state)
    assert "2022-06-06 06:00 UTC" in text
    assert "×720" in text
    assert "25%" in text  # of the simulated day
    for site, node, local in (
        ("JP-TK", "node-jp-tk", "Mon 15:00 JST"),
        ("DE-LU", "node-de-lu", "Mon 08:00 CEST"),
        ("US-CAL-CISO", "node-us-cal-ciso", "Sun 23:00 PDT"),
    ):
        assert site in text
        assert node in text
        assert local in text
    assert "UTC+09:00" in text
    assert "UTC-07:00" in text
    assert "2,118 W" in text
    assert "STALE" in text
    assert "production" in text
    assert "fresh" in text
    assert "50 W" in text
    assert "job-1" in text
    assert "step 1,234" in text
    assert "connection lost" in text
    assert "no migration in flight" in text


def test_render_shows_migrations_in_flight_with_progress_and_bytes_and_the_totals() -> None:
    state = make_state()
    state.now_s = T0
    state.on_migration("job-1", "node-jp-tk", "node-de-lu", time_s=T0, size_bytes=4_000_000_000)
    state.on_migration("job-1", "node-jp-tk", "node-de-lu", time_s=T0 + 60, bytes_done=1_800_000_000)
    state.totals.energy_kwh, state.totals.nonrenewable_kwh = 2.0, 0.5
    text = text_of(state)
    assert "node-jp-tk -> node-de-lu" in text
    assert "45%" in text
    assert "1.8 GB / 4 GB" in text
    assert "migrating node-jp-tk -> node-de-lu" in text  # the event log
    assert "energy 2.000 kWh" in text
    assert "non-renewable 0.500 kWh (25%)" in text


def test_an_empty_state_renders_at_any_width() -> None:
    state = DemoState("nothing yet")
    for width in (40, 80, 200):
        text = text_of(state, width)
        assert "nothing yet" in text
        assert "(nothing yet)" in text  # the event log
    state = make_state()
    assert "JP-TK" in text_of(state, 60)


def test_statuses_merge_into_the_node_and_fields_of_the_wrong_type_are_ignored() -> None:
    state = make_state()
    assert state.on_status("node-jp-tk", _status(T0, surplus_w=1500.0, gpu_power_w=55.5, stale_signals=[]))
    assert state.on_status(
        "node-jp-tk", _status(T0 + 60, surplus_w="lots", gpu_power_w=True, stale_signals="production")
    )
    view = state.nodes["node-jp-tk"]
    assert view.state == "online"
    assert view.seen_online
    assert view.surplus_w == 1500.0
    assert view.gpu_power_w is None  # a bool is not a power
    assert view.stale_signals == ()
    assert view.status_time_s == T0 + 60
    assert [(p.time_s, p.surplus_w, p.stale) for p in view.surplus_history] == [(T0, 1500.0, False)]
    assert not state.on_status("node-elsewhere", _status(T0, surplus_w=1.0))


def test_the_log_tells_state_changes_stale_signals_and_where_the_surplus_is() -> None:
    state = make_state()
    jp, de = "node-jp-tk", "node-de-lu"
    # First statuses, before the retained signals arrived: stale, but that is not news.
    state.on_status(jp, _status(T0, surplus_w=0.0, stale_signals=["carbon", "production"]))
    state.on_status(de, _status(T0, surplus_w=0.0, stale_signals=["production"]))
    state.on_status(jp, _status(T0 + 60, surplus_w=2000.0, stale_signals=[]))
    state.on_status(de, _status(T0 + 60, surplus_w=500.0, stale_signals=[]))
    state.on_status(de, _status(T0 + 120, surplus_w=3000.0, stale_signals=[]))
    state.on_status(jp, _status(T0 + 180, surplus_w=0.0, stale_signals=["production"]))
    state.on_status(jp, _status(T0 + 240, surplus_w=0.0, stale_signals=[]))
    state.on_status(jp, {"state": "offline", "reason": "shutdown", "time": _iso(T0 + 300)})
    lines = [(entry.time_s - T0, entry.text) for entry in state.log]
    assert lines == [
        (0, "node-jp-tk (JP-TK) online"),
        (0, "node-de-lu (DE-LU) online"),
        (60, "most surplus now at JP-TK (2,000 W)"),
        (120, "most surplus now at DE-LU (3,000 W)"),
        (180, "JP-TK: production stale"),
        (240, "JP-TK: signals fresh again"),
        (300, "node-jp-tk (JP-TK) offline (shutdown)"),
    ]
    assert state.leader_site == "DE-LU"
    assert [e.level for e in state.log][4] == "warning"


def test_job_events_follow_the_job_across_nodes_and_sum_the_highest_steps() -> None:
    state = make_state()
    state.on_job_event("node-jp-tk", "job-1", time_s=T0, step=100)
    state.on_job_event("node-jp-tk", "job-1", time_s=T0 + 60, step=250, progress=2.0)
    state.on_job_event("node-de-lu", "job-1", time_s=T0 + 120, step=240)  # resumed from a checkpoint
    state.on_job_event("node-us-cal-ciso", "job-2", time_s=T0 + 120, step=10, state="paused")
    assert state.nodes["node-jp-tk"].job_id is None
    de = state.nodes["node-de-lu"]
    assert (de.job_id, de.job_step, de.job_state) == ("job-1", 240, "running")
    assert state.nodes["node-us-cal-ciso"].job_state == "paused"
    assert state.totals.steps_completed == 250 + 10
    assert "job-1 running on node-de-lu (DE-LU)" in [e.text for e in state.log]
    assert "job-2 paused" in text_of(state)


def test_ended_migrations_leave_the_in_flight_list_and_count_in_the_totals() -> None:
    state = make_state()
    state.on_migration("job-1", "a", "b", time_s=T0, size_bytes=1000, phase="transfer")
    state.on_migration("job-1", "a", "b", time_s=T0 + 30, progress=0.5)
    assert state.migrations["job-1"].progress == 0.5
    assert state.migrations["job-1"].phase == "transfer"
    state.on_migration("job-1", "a", "b", time_s=T0 + 60, outcome="ok")
    state.on_migration("job-2", "b", "c", time_s=T0 + 90, size_bytes=500, outcome="aborted", reason="window")
    assert state.migrations == {}
    assert (state.totals.migrations, state.totals.failed_migrations) == (1, 1)
    assert state.totals.bytes_transferred == 1000
    texts = [e.text for e in state.log]
    assert "job-2: migration b -> c aborted: window" in texts


async def test_the_collector_reads_node_statuses_and_counts_what_it_cannot_use() -> None:
    state = make_state()
    updated: list[str] = []
    collector = StatusCollector(state, "greenferry/v1", on_update=updated.append)
    assert collector.topic_filter == "greenferry/v1/nodes/+/status"
    good = json.dumps(_status(T0, site="JP-TK", surplus_w=812.5, gpu_power_w=50.0, stale_signals=[]))
    collector.handle("greenferry/v1/nodes/node-jp-tk/status", good.encode())
    collector.handle("greenferry/v1/nodes/node-jp-tk/status", b"{not json")
    collector.handle("greenferry/v1/nodes/node-jp-tk/status", b"[1, 2]")
    collector.handle("greenferry/v1/nodes/node-jp-tk/status", b"\xff\xfe")
    collector.handle("greenferry/v1/nodes/node-jp-tk/other", good.encode())
    collector.handle("greenferry/v1/nodes/someone-else/status", good.encode())
    collector.handle("greenferry/v1/nodes/node-de-lu/status", b"")  # a cleared retained status
    assert state.nodes["node-jp-tk"].surplus_w == 812.5
    assert (collector.accepted, collector.rejected, collector.ignored) == (1, 4, 1)
    assert updated == ["node-jp-tk"]
    assert state.nodes["node-de-lu"].state == "unknown"


async def test_the_collector_waits_until_the_state_says_so() -> None:
    state = make_state()
    collector = StatusCollector(state)
    offline = json.dumps({"state": "offline", "reason": "shutdown"}).encode()

    def all_offline(s: DemoState) -> bool:
        return all(v.state == "offline" for v in s.nodes.values())

    async def deliver() -> None:
        for node in state.nodes:
            await asyncio.sleep(0)
            collector.handle(f"greenferry/v1/nodes/{node}/status", offline)

    async with asyncio.TaskGroup() as group:
        group.create_task(deliver())
        assert await collector.wait_until(all_offline, timeout_s=5.0)
    assert not await collector.wait_until(lambda s: s.leader_site == "nowhere", timeout_s=0.01)


async def test_the_live_view_draws_the_state_and_leaves_the_final_frame() -> None:
    state = make_state()
    ticks: list[int] = []
    out = io.StringIO()
    console = Console(file=out, width=120, force_terminal=False)
    async with LiveView(state, console, refresh_per_second=50, before_render=lambda: ticks.append(1)) as view:
        state.on_status("node-jp-tk", _status(T0, surplus_w=4321.0, stale_signals=[]))
        view.refresh()
    assert "4,321 W" in out.getvalue()
    assert len(ticks) >= 2
    with pytest.raises(ValueError, match="refresh_per_second"):
        LiveView(state, console, refresh_per_second=0)


def test_jobs_and_migrations_in_the_status_fill_the_view() -> None:
    state = make_state()
    migration = {
        "migration_id": "m-1",
        "job_id": "job-1",
        "src": "node-jp-tk",
        "dst": "node-de-lu",
        "phase": "transfer",
        "total_bytes": 2_000_000_000,
        "done_bytes": 500_000_000,
    }
    job = {"job_id": "job-1", "state": "migrating", "step": 420, "epoch": 0}
    state.on_status("node-jp-tk", _status(T0, jobs=[job], migrations=[migration]))
    jp = state.nodes["node-jp-tk"]
    assert (jp.job_id, jp.job_step, jp.job_state) == ("job-1", 420, "migrating")
    assert state.migrations["job-1"].progress == 0.25
    assert state.migrations["job-1"].phase == "transfer"
    assert "500 MB / 2 GB" in text_of(state)
    state.on_status("node-jp-tk", _status(T0 + 60, jobs=[{"job_id": 7}], migrations=["junk"]))
    assert jp.job_id is None  # no job it can show: the node hosts none
    assert state.migrations == {}  # no longer listed: not in flight any more (not counted either)
    assert state.totals.migrations == 0
    assert state.totals.steps_completed == 420
