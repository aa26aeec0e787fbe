"""[[elastic]] config errors, the torchrun command line, and hostile group-state messages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from greenferry.config import config_from_mapping
from greenferry.core.signals import SignalBoard
from greenferry.daemon.elastic import ElasticMember, agent_argv
from greenferry.errors import ConfigError
from greenferry.testing.clock import ManualClock


def _data(tmp_path: Path, **group: Any) -> dict[str, Any]:
    return {
        "node": {"name": "n", "site": "s", "data_dir": str(tmp_path)},
        "elastic": [
            {"name": "job", "command": ["train.py", "--steps", "10"], "rendezvous_endpoint": "10.0.0.5:29400"}
            | group
        ],
    }


@pytest.mark.parametrize(
    ("group", "field"),
    [
        ({"rendezvous_endpoint": "10.0.0.5:70000"}, "elastic.0.rendezvous_endpoint"),
        ({"rendezvous_endpoint": "no-port"}, "elastic.0.rendezvous_endpoint"),
        ({"rendezvous_endpoint": "a;rm -rf /:1"}, "elastic.0.rendezvous_endpoint"),
        ({"command": []}, "elastic.0.command"),
        ({"nproc_per_node": 0}, "elastic.0.nproc_per_node"),
        ({"name": "../x"}, "elastic.0.name"),
        ({"join_delay_s": -1}, "elastic.0.join_delay_s"),
        ({"surprise": 1}, "elastic.0.surprise"),
    ],
)
def test_bad_elastic_groups_are_refused_naming_the_field(
    tmp_path: Path, group: dict[str, Any], field: str
) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        config_from_mapping(_data(tmp_path, **group), environ={})


def test_the_agent_command_line_carries_the_group(tmp_path: Path) -> None:
    config = config_from_mapping(_data(tmp_path, nproc_per_node=2, max_nodes=4), environ={})
    argv = agent_argv(config.elastic[0])
    assert argv[1:3] == ["-m", "torch.distributed.run"]
    assert "--nnodes=1:4" in argv
    assert "--nproc-per-node=2" in argv
    assert "--rdzv-endpoint=10.0.0.5:29400" in argv
    assert "--rdzv-id=job" in argv
    conf = next(a for a in argv if a.startswith("--rdzv-conf="))
    assert conf.startswith("--rdzv-conf=is_host=false,")
    assert argv[-3:] == ["train.py", "--steps", "10"]


def test_join_power_defaults_to_the_workers_and_host_share(tmp_path: Path) -> None:
    data = _data(tmp_path, nproc_per_node=2)
    data["node"]["hardware_profile"] = "l4"
    config = config_from_mapping(data, environ={})
    member = ElasticMember(config.elastic[0], config, ManualClock(), SignalBoard({}))
    from greenferry.hardware_profiles import get_profile

    l4 = get_profile("l4")
    assert member.join_surplus_w == 2 * l4.train_power_w + l4.host_power_w
    assert member.state == "waiting"


@pytest.mark.parametrize(
    "payload", [b"", b"not json", b"[1, 2]", b'{"state": 5}', b"\xff\xfe", b'{"state": "x"}']
)
def test_hostile_group_states_change_nothing(tmp_path: Path, payload: bytes) -> None:
    config = config_from_mapping(_data(tmp_path), environ={})
    member = ElasticMember(config.elastic[0], config, ManualClock(), SignalBoard({}))
    member.on_group_state(payload)
    assert member.state == "waiting"
    member.on_group_state(b'{"state": "done"}')
    assert member.state == "done"


async def test_without_surplus_the_share_never_joins(tmp_path: Path) -> None:
    config = config_from_mapping(_data(tmp_path, join_delay_s=0), environ={})
    member = ElasticMember(config.elastic[0], config, ManualClock(), SignalBoard({}))
    for _ in range(3):
        await member.step()
    assert member.state == "waiting"
    assert member.joins == 0
