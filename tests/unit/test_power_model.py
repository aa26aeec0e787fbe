"""ModelPowerMeter: power from the hardware profile, energy integrated over a manual clock, caps in range."""

from __future__ import annotations

import pytest

from greenferry.daemon.power import ModelPowerMeter, PowerMeter
from greenferry.errors import HardwareError
from greenferry.hardware_profiles import get_profile
from greenferry.testing.clock import ManualClock

H100 = get_profile("h100-sxm")  # idle 70 W, train 600 W, caps 200..700 W


class Utilization:
    """What the job runner would report: 0 idle, 1 training."""

    def __init__(self, value: float = 0.0) -> None:
        self.value = value

    def __call__(self) -> float:
        return self.value


def test_is_a_power_meter() -> None:
    assert isinstance(ModelPowerMeter(H100, 1, ManualClock()), PowerMeter)


async def test_idle_power_and_energy_over_clock_time() -> None:
    clock = ManualClock()
    meter = ModelPowerMeter(H100, 2, clock)
    first = await meter.read()
    assert first.source == "model"
    assert first.time_s == clock.now_s()
    assert [g.power_w for g in first.gpus] == [70.0, 70.0]
    assert [g.energy_j for g in first.gpus] == [0.0, 0.0]
    clock.advance(10.0)
    second = await meter.read()
    assert [g.energy_j for g in second.gpus] == [pytest.approx(700.0)] * 2
    assert all(g.energy_from_counter is False for g in second.gpus)
    assert all(g.utilization == 0.0 for g in second.gpus)
    assert second.gpus[0].name == H100.display_name
    assert second.gpu_power_w == pytest.approx(140.0)


async def test_training_power_is_held_between_observations() -> None:
    clock = ManualClock()
    utilization = Utilization()
    meter = ModelPowerMeter(H100, 1, clock, utilization_fn=utilization)
    clock.advance(10.0)
    utilization.value = 1.0  # the job starts; the meter sees it at the next read
    (gpu,) = (await meter.read()).gpus
    assert gpu.energy_j == pytest.approx(70.0 * 10)  # idle until this observation
    assert gpu.power_w == 600.0
    assert gpu.utilization == 1.0
    clock.advance(5.0)
    (gpu,) = (await meter.read()).gpus
    assert gpu.energy_j == pytest.approx(700.0 + 600.0 * 5)


@pytest.mark.parametrize(("raw", "power_w"), [(0.5, 335.0), (1.5, 600.0), (-1.0, 70.0), (float("nan"), 70.0)])
async def test_utilisation_is_interpolated_and_clamped(raw: float, power_w: float) -> None:
    meter = ModelPowerMeter(H100, 1, ManualClock(), utilization_fn=Utilization(raw))
    (gpu,) = (await meter.read()).gpus
    assert gpu.power_w == pytest.approx(power_w)
    assert gpu.utilization is not None
    assert 0.0 <= gpu.utilization <= 1.0


async def test_a_cap_limits_power_and_the_energy_after_it() -> None:
    clock = ManualClock()
    meter = ModelPowerMeter(H100, 2, clock, utilization_fn=Utilization(1.0))
    clock.advance(4.0)
    assert await meter.set_power_limit_w(1, 250.0) == 250.0
    clock.advance(6.0)
    gpu0, gpu1 = (await meter.read()).gpus
    assert gpu0.power_w == 600.0
    assert gpu1.power_w == 250.0
    assert gpu1.power_limit_w == 250.0
    assert (gpu1.power_limit_min_w, gpu1.power_limit_max_w) == (200.0, 700.0)
    assert gpu0.energy_j == pytest.approx(600.0 * 10)
    assert gpu1.energy_j == pytest.approx(600.0 * 4 + 250.0 * 6)


async def test_a_cap_above_the_models_power_changes_nothing_but_the_limit() -> None:
    meter = ModelPowerMeter(H100, 1, ManualClock())
    await meter.set_power_limit_w(0, 200.0)  # idle 70 W is under any cap
    (gpu,) = (await meter.read()).gpus
    assert gpu.power_w == 70.0
    assert gpu.power_limit_w == 200.0


@pytest.mark.parametrize("limit_w", [199.0, 700.5, float("nan"), float("-inf")])
async def test_limits_outside_the_profile_range_are_refused(limit_w: float) -> None:
    meter = ModelPowerMeter(H100, 1, ManualClock())
    with pytest.raises(HardwareError, match=r"outside the h100-sxm range 200\.\.700 W"):
        await meter.set_power_limit_w(0, limit_w)
    assert (await meter.read()).gpus[0].power_limit_w == 700.0


async def test_unknown_gpu_is_refused() -> None:
    meter = ModelPowerMeter(H100, 2, ManualClock())
    with pytest.raises(HardwareError, match="no GPU 2: the model has 2 GPU"):
        await meter.set_power_limit_w(2, 300.0)
    with pytest.raises(HardwareError, match="no GPU -1"):
        await meter.set_power_limit_w(-1, 300.0)


async def test_range_edges_are_allowed_and_restore_goes_back_to_the_default() -> None:
    meter = ModelPowerMeter(H100, 2, ManualClock())
    await meter.set_power_limit_w(0, 200.0)
    await meter.set_power_limit_w(1, 700.0)
    assert meter.describe()["power_limits_w"] == [200.0, 700.0]
    await meter.restore_power_limits()
    assert [g.power_limit_w for g in (await meter.read()).gpus] == [700.0, 700.0]
    assert meter.describe() == {
        "source": "model",
        "profile": "h100-sxm",
        "gpu_count": 2,
        "power_limits_w": [700.0, 700.0],
        "power_limit_min_w": 200.0,
        "power_limit_max_w": 700.0,
    }
    await meter.close()


async def test_zero_gpus_reads_an_empty_sample_and_negative_counts_are_refused() -> None:
    sample = await ModelPowerMeter(H100, 0, ManualClock()).read()
    assert sample.gpus == ()
    assert sample.gpu_power_w == 0.0
    with pytest.raises(ValueError, match="gpu_count"):
        ModelPowerMeter(H100, -1, ManualClock())
