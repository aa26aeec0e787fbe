"""Scenarios: TOML files describing sites, their renewable sources, links, jobs and forecasts.

A scenario is validated by pydantic before anything runs (errors name the file and the field). Data paths
are relative to the scenario file; the built-in scenarios ship in ``greenferry/scenarios`` next to the
openly licensed traces in ``greenferry/data``. ``build_world(spec, seed)`` turns a scenario into the
engine's ``World``: traces become per-step surplus in W, and the seed draws the job mix.

A Solcast source may also name the provider's forecast file (``forecast_path``); ``build_world`` then
converts it to epoch-mean surplus forecasts per issue (``ScenarioWorld.provided_forecast_w``), which the
``file`` forecaster hands to the policies.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from greenferry.core.feasibility import MigrationParams
from greenferry.core.forecast import ForecastKind
from greenferry.core.jobs import MAX_JOB_PARTS
from greenferry.core.units import parse_bandwidth_bps, parse_duration_s, parse_size_bytes
from greenferry.errors import ConfigError
from greenferry.hardware_profiles import get_profile
from greenferry.sim import renewables, traces
from greenferry.sim.engine import JobModel, PartsModel, SiteModel, World

FloatArray = npt.NDArray[np.float64]

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "scenarios"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _SourceBase(_Strict):
    path: str
    shift: str = "0h"  # time shift, wrapping around the scenario period (moves a trace to another longitude)
    replay: bool = False  # relabel the trace so its first sample falls on the scenario start

    @field_validator("shift")
    @classmethod
    def _shift(cls, v: str) -> str:
        parse_duration_s(v.lstrip("+-"))
        return v


class CurtailmentSource(_SourceBase):
    """Curtailed renewable power of a grid zone (MW), of which the site may use ``share``."""

    type: Literal["curtailment"]
    column: str = "Total_Curtailment_NP15_MW"
    share: float = Field(gt=0, le=1)


class PvSource(_SourceBase):
    """A PV plant whose output follows a clear-sky model dimmed by Open-Meteo cloud cover."""

    type: Literal["pv"]
    capacity_w: float = Field(gt=0)
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)


class WindSource(_SourceBase):
    """A wind turbine driven by Open-Meteo 10 m wind speed, extrapolated to hub height."""

    type: Literal["wind"]
    capacity_w: float = Field(gt=0)
    hub_height_m: float = Field(default=100.0, gt=10)


class SolcastSource(_SourceBase):
    """A PV plant following the Solcast normalised-output trace of a city.

    ``forecast_path`` optionally names the Solcast forecast file (same city column) that forecast type
    ``file`` reads; it is scaled, relabelled (``replay``) and shifted (``shift``) like ``path``. Only a
    site whose only source this is may have one: the forecast replaces the site's whole generation.
    """

    type: Literal["solcast"]
    city: str
    capacity_w: float = Field(gt=0)
    forecast_path: str | None = None


class IrradianceSource(_SourceBase):
    """A PV plant driven by a measured/typical irradiance file (NSRDB PSM3, TMY3 or PVGIS)."""

    type: Literal["irradiance"]
    format: Literal["psm3", "tmy3", "pvgis"]
    capacity_w: float = Field(gt=0)


class CsvSource(_SourceBase):
    """Any CSV: a timestamp column and a power (W/kW/MW) or capacity-factor ('fraction') column."""

    type: Literal["csv"]
    time_column: str
    value_column: str
    unit: str
    timezone: str = "UTC"
    capacity_w: float | None = Field(default=None, gt=0)


Source = Annotated[
    CurtailmentSource | PvSource | WindSource | SolcastSource | IrradianceSource | CsvSource,
    Field(discriminator="type"),
]


class CarbonSpec(_Strict):
    """Grid carbon intensity: an Electricity Maps CSV, or a constant."""

    type: Literal["electricitymaps", "constant"]
    path: str | None = None
    g_per_kwh: float | None = Field(default=None, ge=0)
    shift: str = "0h"
    replay: bool = False

    @model_validator(mode="after")
    def _needs_value(self) -> CarbonSpec:
        if self.type == "electricitymaps" and not self.path:
            raise ValueError("carbon type 'electricitymaps' needs a path")
        if self.type == "constant" and self.g_per_kwh is None:
            raise ValueError("carbon type 'constant' needs g_per_kwh")
        return self


class SiteSpec(_Strict):
    """One micro-datacenter."""

    name: str = Field(min_length=1, max_length=64)
    timezone: str = "UTC"  # IANA name; informational (every time in greenferry is UTC)
    gpu_slots: int = Field(default=4, ge=1, le=10_000)
    base_load_w: float = Field(default=0.0, ge=0)
    sources: list[Source] = Field(min_length=1)
    carbon: CarbonSpec | None = None

    @model_validator(mode="after")
    def _forecast_alone(self) -> SiteSpec:
        with_file = [
            i for i, s in enumerate(self.sources) if isinstance(s, SolcastSource) and s.forecast_path
        ]
        if with_file and len(self.sources) > 1:
            raise ValueError(
                f"sources.{with_file[0]}.forecast_path: a forecast file is supported only on a site whose "
                f"only source it forecasts (it stands for the whole generation); this site has "
                f"{len(self.sources)} sources"
            )
        return self

    @property
    def forecast_source(self) -> SolcastSource | None:
        """The source whose forecast file forecasts this site's generation, if any."""
        source = self.sources[0]
        return source if isinstance(source, SolcastSource) and source.forecast_path else None

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError) as err:
            raise ValueError(f"unknown time zone {v!r} (expected an IANA name such as Europe/Rome)") from err
        return v


class LinkSpec(_Strict):
    """A WAN link between two sites (symmetric)."""

    between: tuple[str, str]
    bandwidth: str

    @field_validator("bandwidth")
    @classmethod
    def _bw(cls, v: str) -> str:
        link_bandwidth_bps(v)
        return v


class NetworkSpec(_Strict):
    """Links between sites; pairs not listed get ``default_bandwidth`` ("0bps" for none)."""

    default_bandwidth: str = "10Gbps"
    links: list[LinkSpec] = Field(default_factory=list)

    @field_validator("default_bandwidth")
    @classmethod
    def _default_bw(cls, v: str) -> str:
        link_bandwidth_bps(v)
        return v


_ZERO_BANDWIDTH = re.compile(r"\s*0+(\.0*)?\s*([kMGT]?(bps|bit/s))?\s*")


def link_bandwidth_bps(text: str) -> float:
    """A link's bandwidth in bit/s; zero (``"0bps"``, ``"0"``) means the sites are not linked."""
    if _ZERO_BANDWIDTH.fullmatch(text):
        return 0.0
    return parse_bandwidth_bps(text)


class JobPartsSpec(_Strict):
    """Data-parallel jobs in the mix: ``share`` of the jobs are made of parts, one worker (GPU) each.

    A data-parallel job has ``workers`` parts (drawn uniformly, both ends included), each with its own
    state drawn log-uniformly in ``worker_checkpoint``; its first ``pinned`` parts never leave its home
    site. Its ``work`` is the running time with every part on one site, each part draws the profile's
    power, and while its running parts are on more than one site the job progresses at
    ``cross_site_efficiency`` of their summed rate. The draws use a stream of their own, so the rest of
    the mix (arrivals, work, profiles, homes) is the same as without ``[jobs.parts]``.
    """

    share: float = Field(default=1.0, ge=0, le=1)
    workers: tuple[int, int] = (2, 4)
    worker_checkpoint: tuple[str, str] = ("20GB", "80GB")
    pinned: int = Field(default=0, ge=0, le=MAX_JOB_PARTS)
    cross_site_efficiency: float = Field(default=0.8, gt=0, le=1)

    @field_validator("workers")
    @classmethod
    def _workers(cls, v: tuple[int, int]) -> tuple[int, int]:
        low, high = v
        if low < 1:
            raise ValueError(f"a job needs at least one worker, got {low}")
        if high < low:
            raise ValueError(f"the range is reversed: {low} > {high}")
        if high > MAX_JOB_PARTS:
            raise ValueError(f"at most {MAX_JOB_PARTS} workers per job, got {high}")
        return v

    @field_validator("worker_checkpoint")
    @classmethod
    def _sizes(cls, v: tuple[str, str]) -> tuple[str, str]:
        low, high = (parse_size_bytes(x) for x in v)
        if not 0 < low <= high:
            raise ValueError(f"expected two sizes 0 < low <= high, got {v[0]!r} and {v[1]!r}")
        return v

    @model_validator(mode="after")
    def _something_moves(self) -> JobPartsSpec:
        if self.pinned >= self.workers[0]:
            raise ValueError(
                f"pinned = {self.pinned} pins every worker of a job with {self.workers[0]} workers: "
                "nothing could move"
            )
        return self


class JobsSpec(_Strict):
    """The job mix, drawn from the seed: arrivals every ``spacing`` with jitter, work and sizes in ranges."""

    count: int = Field(ge=1, le=100_000)
    first_arrival: str = "0h"
    spacing: str = "12h"
    # Running time at full speed per job (single-GPU jobs: GPU-hours), drawn uniformly.
    work: tuple[str, str] = ("12h", "48h")
    checkpoint: tuple[str, str] = ("1GB", "100GB")  # log-uniform
    profiles: list[str] = Field(default_factory=lambda: ["a100-80gb"], min_length=1)
    home: Literal["random"] | list[str] = "random"
    isolated: bool = False  # each job has the sites to itself: the paper's single-job setting
    parts: JobPartsSpec | None = None  # data-parallel jobs made of parts; none when absent


class ForecastSpec(_Strict):
    """What the policies are told about the future."""

    type: ForecastKind = "perfect"
    sigma: float = Field(default=0.2, ge=0, le=2)


class ScenarioSpec(_Strict):
    """A whole scenario file."""

    name: str = Field(min_length=1, max_length=64)
    description: str = ""
    start: datetime
    duration: str
    step: str = "5min"
    decision_interval: str = "5min"
    oracle_slack: str = "1h"
    default_carbon_g_per_kwh: float = Field(default=300.0, ge=0)
    migration: dict[str, float] = Field(default_factory=dict)
    forecast: ForecastSpec = ForecastSpec()
    sites: list[SiteSpec] = Field(min_length=1)
    network: NetworkSpec = NetworkSpec()
    jobs: JobsSpec

    @field_validator("start")
    @classmethod
    def _utc(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            raise ValueError("start must carry a time zone, e.g. 2024-04-01T00:00:00Z")
        return v.astimezone(UTC)

    @model_validator(mode="after")
    def _consistent(self) -> ScenarioSpec:
        names = [s.name for s in self.sites]
        if len(set(names)) != len(names):
            raise ValueError(f"site names must be unique: {names}")
        for link in self.network.links:
            for end in link.between:
                if end not in names:
                    raise ValueError(f"link {link.between} names unknown site {end!r}; sites: {names}")
        if self.jobs.home != "random":
            for home in self.jobs.home:
                if home not in names:
                    raise ValueError(f"jobs.home names unknown site {home!r}; sites: {names}")
        if self.jobs.parts is not None and not self.jobs.isolated:
            homes = names if self.jobs.home == "random" else self.jobs.home
            fewest = min(site.gpu_slots for site in self.sites if site.name in homes)
            if self.jobs.parts.workers[1] > fewest:
                raise ValueError(
                    f"jobs.parts.workers: a job of {self.jobs.parts.workers[1]} workers needs as many GPU "
                    f"slots at its home site, and a home site has only {fewest}"
                )
        step = parse_duration_s(self.step)
        interval = parse_duration_s(self.decision_interval)
        if step <= 0 or interval < step or abs(interval / step - round(interval / step)) > 1e-9:
            raise ValueError("decision_interval must be a whole multiple of step")
        if parse_duration_s(self.duration) < step:
            raise ValueError("duration must be at least one step")
        MigrationParams(**self.migration)
        if self.forecast.type == "file" and not any(site.forecast_source for site in self.sites):
            raise ValueError(
                "forecast.type = 'file' needs forecast_path on the solcast source of at least one site "
                "(sites.N.sources.0.forecast_path); no site has one"
            )
        return self


def builtin_scenarios() -> dict[str, Path]:
    """Built-in scenario names and their files."""
    return {p.stem: p for p in sorted(BUILTIN_DIR.glob("*.toml"))}


def _toml_value(text: str) -> object:
    """A TOML value (number, boolean, string, array, inline table); bare words are strings."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_override(data: dict[str, Any], assignment: str, origin: str = "--set") -> None:
    """Set ``a.b.0.c=VALUE`` in a scenario's TOML data (numbers index arrays of tables such as sites).

    Raises:
        ConfigError: no ``=``, an empty key, or a path that walks through a missing table or index.
    """
    key, sep, text = assignment.partition("=")
    parts = [part.strip() for part in key.strip().split(".")]
    if not sep or not all(parts):
        raise ConfigError(f"{origin} {assignment!r}: expected KEY=VALUE with a dotted KEY, e.g. jobs.count=4")
    node: Any = data
    for depth, part in enumerate(parts[:-1]):
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"{origin} {assignment!r}: {where}: no such index (there are {len(node)})")
            node = node[int(part)]
        elif isinstance(node, dict):
            node = node.setdefault(part, {})
        else:
            raise ConfigError(f"{origin} {assignment!r}: {where} is a value, not a table")
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(
                f"{origin} {assignment!r}: {key.strip()}: no such index (there are {len(node)})"
            )
        node[int(last)] = _toml_value(text.strip())
    elif isinstance(node, dict):
        node[last] = _toml_value(text.strip())
    else:
        raise ConfigError(f"{origin} {assignment!r}: {'.'.join(parts[:-1])} is a value, not a table")


def load_scenario(name_or_path: str | Path, overrides: Sequence[str] = ()) -> tuple[ScenarioSpec, Path]:
    """Load a built-in scenario by name, or a scenario file; returns the spec and its directory.

    ``overrides`` are ``KEY=VALUE`` assignments applied to the file's data before validation (for
    sensitivity studies: ``migration.network_energy_j_per_byte=2.16e-4``, ``network.links=[]``).

    Raises:
        ConfigError: unknown name, unreadable file, bad TOML, a bad override, or a field that does not
            validate.
    """
    builtins = builtin_scenarios()
    path = builtins.get(str(name_or_path)) or Path(name_or_path)
    if not path.is_file():
        raise ConfigError(f"no scenario {str(name_or_path)!r}: not a file, nor one of {', '.join(builtins)}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"{path}: cannot read scenario: {err}") from err
    for assignment in overrides:
        apply_override(data, assignment)
    try:
        spec = ScenarioSpec.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}"
            for e in err.errors(include_url=False)
        )
        applied = f" (with --set {' '.join(overrides)})" if overrides else ""
        raise ConfigError(f"{path}{applied}: {problems}") from err
    return spec, path.resolve().parent


@lru_cache(maxsize=16)
def _load_forecast(path: str, city: str) -> traces.ForecastTable:
    return traces.load_solcast_forecast(path, city)


@lru_cache(maxsize=64)
def _load_trace(kind: str, path: str, key: str) -> traces.Trace:
    if kind == "curtailment":
        return traces.load_caiso_curtailment(path, column=key)
    if kind == "open-meteo":
        return traces.load_open_meteo(path, key)
    if kind == "carbon":
        return traces.load_electricitymaps_carbon(path)
    if kind == "solcast":
        return traces.load_solcast_actual(path, key)
    if kind == "psm3":
        return traces.load_psm3(path, column="GHI")
    if kind == "tmy3":
        return traces.load_tmy3(path, column="GHI")
    if kind == "pvgis":
        return traces.load_pvgis_tmy(path, column="G(h)")
    raise ValueError(kind)


def _grid(
    trace: traces.Trace, source: _SourceBase | CarbonSpec, start_s: float, step_s: float, n: int, method: str
) -> FloatArray:
    """Resample a trace onto the scenario grid, honouring ``replay`` and the wrapping ``shift``."""
    if source.replay:
        trace = traces.shift(trace, round(start_s - float(trace.times_s[0])))
    values = traces.resample(trace, start_s, step_s, n, method=method)  # type: ignore[arg-type]
    shift_steps = _shift_steps(source, step_s)
    return np.roll(values, shift_steps) if shift_steps else values


def _shift_steps(source: _SourceBase | CarbonSpec, step_s: float) -> int:
    """The source's ``shift`` in whole steps (later is positive)."""
    sign = -1.0 if source.shift.startswith("-") else 1.0
    return round(sign * parse_duration_s(source.shift.lstrip("+-")) / step_s)


def _source_power_w(source: Source, base: Path, start_s: float, step_s: float, n: int) -> FloatArray:
    path = str((base / source.path).resolve())
    times = start_s + step_s * np.arange(n, dtype=np.float64)
    if isinstance(source, CurtailmentSource):
        return (
            _grid(_load_trace("curtailment", path, source.column), source, start_s, step_s, n, "hold")
            * source.share
        )
    if isinstance(source, PvSource):
        cloud = _grid(_load_trace("open-meteo", path, "cloudcover"), source, start_s, step_s, n, "linear")
        clear = renewables.clear_sky_ghi_w_m2(times + 0.5 * step_s, source.lat, source.lon)  # step midpoints
        ghi = renewables.ghi_from_cloud_cover(clear, cloud)
        return np.asarray(renewables.pv_power_fraction(ghi), dtype=np.float64) * source.capacity_w
    if isinstance(source, WindSource):
        speed = _grid(_load_trace("open-meteo", path, "windspeed_10m"), source, start_s, step_s, n, "linear")
        frac = renewables.wind_power_fraction(speed, hub_height_m=source.hub_height_m)
        return np.asarray(frac, dtype=np.float64) * source.capacity_w
    if isinstance(source, SolcastSource):
        return (
            _grid(_load_trace("solcast", path, source.city), source, start_s, step_s, n, "mean")
            * source.capacity_w
        )
    if isinstance(source, IrradianceSource):
        ghi = _grid(_load_trace(source.format, path, ""), source, start_s, step_s, n, "linear")
        return np.asarray(renewables.pv_power_fraction(ghi), dtype=np.float64) * source.capacity_w
    trace = traces.load_generic_csv(
        path,
        time_column=source.time_column,
        value_column=source.value_column,
        unit=source.unit,
        timezone=source.timezone,
    )
    values = _grid(trace, source, start_s, step_s, n, "mean")
    if trace.unit == "fraction":
        if source.capacity_w is None:
            raise ConfigError(f"{path}: a 'fraction' trace needs capacity_w on its source")
        return values * source.capacity_w
    if trace.unit != "W":
        raise ConfigError(f"{path}: a generation source must be in W, kW, MW or fraction, not {trace.unit}")
    return values


def _links(spec: ScenarioSpec) -> FloatArray:
    names = [s.name for s in spec.sites]
    n = len(names)
    bw = np.full((n, n), link_bandwidth_bps(spec.network.default_bandwidth))
    for link in spec.network.links:
        a, b = (names.index(x) for x in link.between)
        bw[a, b] = bw[b, a] = link_bandwidth_bps(link.bandwidth)
    np.fill_diagonal(bw, 0.0)
    return bw


def _jobs(spec: ScenarioSpec, seed: int, step_s: float, n_steps: int, n_sites: int) -> tuple[JobModel, ...]:
    rng = np.random.default_rng(seed)
    cfg = spec.jobs
    names = [s.name for s in spec.sites]
    spacing = parse_duration_s(cfg.spacing)
    first = parse_duration_s(cfg.first_arrival)
    work_lo, work_hi = (parse_duration_s(x) for x in cfg.work)
    size_lo, size_hi = (math.log(parse_size_bytes(x)) for x in cfg.checkpoint)
    parts_rng = np.random.default_rng([seed, 1])  # a stream of its own: the rest of the mix is unchanged
    jobs = []
    for i in range(cfg.count):
        arrival = first + i * spacing + rng.uniform(0, spacing)
        profile = get_profile(cfg.profiles[int(rng.integers(len(cfg.profiles)))])
        home = (
            int(rng.integers(n_sites)) if cfg.home == "random" else names.index(cfg.home[i % len(cfg.home)])
        )
        work_s = rng.uniform(work_lo, work_hi)
        power_w = profile.train_power_w + profile.host_power_w
        checkpoint_bytes = float(math.exp(rng.uniform(size_lo, size_hi)))
        parts = None if cfg.parts is None else _draw_parts(cfg.parts, parts_rng)
        if parts is not None:
            power_w *= parts.n_parts
            checkpoint_bytes = float(sum(parts.state_bytes))
        jobs.append(
            JobModel(
                job_id=i,
                arrival_step=min(n_steps - 1, int(arrival // step_s)),
                work_steps=max(1, math.ceil(work_s / step_s)),
                power_w=power_w,
                checkpoint_bytes=checkpoint_bytes,
                home_site=home,
                profile=profile.name,
                parts=parts,
            )
        )
    return tuple(jobs)


def _draw_parts(cfg: JobPartsSpec, rng: np.random.Generator) -> PartsModel | None:
    """One job's parts, or None when the draw makes it a one-part job (``share``)."""
    data_parallel = rng.random() < cfg.share
    n_parts = int(rng.integers(cfg.workers[0], cfg.workers[1] + 1))
    size_lo, size_hi = (math.log(parse_size_bytes(x)) for x in cfg.worker_checkpoint)
    sizes = np.exp(rng.uniform(size_lo, size_hi, size=n_parts))
    if not data_parallel:
        return None
    return PartsModel(
        state_bytes=tuple(float(x) for x in sizes),
        pinned=tuple(k < cfg.pinned for k in range(n_parts)),
        cross_site_efficiency=cfg.cross_site_efficiency,
    )


@dataclass(frozen=True)
class ScenarioWorld(World):
    """A scenario's world, with the forecasts its files provide (if any)."""

    # (S, E, L): mean surplus (W) of site s over epoch e + k, forecast by the latest issue at or before the
    # start of epoch e; NaN where no file says (no file for the site, beyond its reach, holes). None: no
    # site has a forecast file.
    provided_forecast_w: FloatArray | None = None


def provided_forecast_w(spec: ScenarioSpec, world: World, kind: ForecastKind) -> FloatArray | None:
    """The provided forecast that forecast ``kind`` needs: the files' for ``file``, else None.

    Raises:
        ConfigError: ``kind`` is ``file`` (e.g. from ``--forecast file``) but no site has a forecast file.
    """
    if kind != "file":
        return None
    provided = world.provided_forecast_w if isinstance(world, ScenarioWorld) else None
    if provided is None:
        raise ConfigError(
            f"scenario {spec.name!r}: forecast 'file' needs forecast_path on the solcast source of at least "
            "one site (sites.N.sources.0.forecast_path); no site has one"
        )
    return provided


def build_world(spec: ScenarioSpec, base_dir: Path, seed: int = 0) -> ScenarioWorld:
    """Turn a scenario into the engine's world; the seed draws the jobs (every seed shares the traces)."""
    sites, provided = _build_sites(spec, base_dir)
    step_s = parse_duration_s(spec.step)
    n_steps = sites[0].surplus_w.size
    return ScenarioWorld(
        name=spec.name,
        start_s=spec.start.timestamp(),
        step_s=step_s,
        n_steps=n_steps,
        sites=sites,
        bandwidth_bps=_links(spec),
        jobs=_jobs(spec, seed, step_s, n_steps, len(sites)),
        params=MigrationParams(**spec.migration),
        epoch_steps=round(parse_duration_s(spec.decision_interval) / step_s),
        isolated=spec.jobs.isolated,
        provided_forecast_w=provided,
    )


_SITES_CACHE: dict[tuple[str, str], tuple[tuple[SiteModel, ...], FloatArray | None]] = {}


def _build_sites(spec: ScenarioSpec, base_dir: Path) -> tuple[tuple[SiteModel, ...], FloatArray | None]:
    """Sites of a scenario and their provided forecasts; built once per scenario content (every seed
    shares the traces)."""
    key = (spec.model_dump_json(exclude={"jobs", "forecast"}), str(base_dir))
    if key not in _SITES_CACHE:
        _SITES_CACHE.clear()
        _SITES_CACHE[key] = (_make_sites(spec, base_dir), _provided_forecasts(spec, base_dir))
    return _SITES_CACHE[key]


def _make_sites(spec: ScenarioSpec, base_dir: Path) -> tuple[SiteModel, ...]:
    start_s = spec.start.timestamp()
    step_s = parse_duration_s(spec.step)
    n_steps = int(parse_duration_s(spec.duration) // step_s)
    sites = []
    for site in spec.sites:
        generation = np.zeros(n_steps)
        for source in site.sources:
            generation += _source_power_w(source, base_dir, start_s, step_s, n_steps)
        surplus = np.maximum(generation - site.base_load_w, 0.0)
        carbon = _carbon(spec, site, base_dir, start_s, step_s, n_steps)
        sites.append(SiteModel(site.name, surplus, carbon, site.gpu_slots))
    return tuple(sites)


def _provided_forecasts(spec: ScenarioSpec, base_dir: Path) -> FloatArray | None:
    """(S, E, L) epoch-mean surplus forecasts from the sites' forecast files (NaN rows for sites without)."""
    if not any(site.forecast_source for site in spec.sites):
        return None
    start_s = spec.start.timestamp()
    step_s = parse_duration_s(spec.step)
    n_steps = int(parse_duration_s(spec.duration) // step_s)
    epoch_steps = round(parse_duration_s(spec.decision_interval) / step_s)
    per_site: list[FloatArray | None] = []
    for site in spec.sites:
        source = site.forecast_source
        per_site.append(
            None
            if source is None
            else _solcast_forecast_surplus_w(
                source, site.base_load_w, base_dir, start_s, step_s, n_steps, epoch_steps
            )
        )
    n_epochs = math.ceil(n_steps / epoch_steps)
    n_leads = max(f.shape[1] for f in per_site if f is not None)
    out = np.full((len(spec.sites), n_epochs, n_leads), np.nan)
    for s, f in enumerate(per_site):
        if f is not None:
            out[s, :, : f.shape[1]] = f
    return out


def _solcast_forecast_surplus_w(
    source: SolcastSource,
    base_load_w: float,
    base: Path,
    start_s: float,
    step_s: float,
    n_steps: int,
    epoch_steps: int,
) -> FloatArray:
    """(E, L) forecast surplus (W) of a site whose only source is ``source``, from its forecast file.

    Row ``e`` is what the latest issue at or before the start of epoch ``e`` says about epochs
    ``e .. e + L - 1``. Each step's forecast generation is the time-weighted mean of the issue's target
    periods over the step (NaN unless they cover it whole) times ``capacity_w``; the step's surplus is
    ``max(generation - base_load_w, 0)``, as for the actual trace; an epoch's value is the mean of its
    steps (NaN if any is NaN, or runs past the scenario). ``replay`` and ``shift`` move issue and target
    times as they move the actual trace (a row whose issue and target a wrapping shift parts is dropped).
    """
    if source.forecast_path is None:
        raise ValueError("source has no forecast_path")
    table = _load_forecast(str((base / source.forecast_path).resolve()), source.city)
    issue_s = table.issue_times_s.astype(np.float64)
    target_s = table.target_start_s.astype(np.float64)
    values = np.asarray(table.values, dtype=np.float64)
    target_step_s = float(table.target_step_s)
    if source.replay:
        actual = _load_trace("solcast", str((base / source.path).resolve()), source.city)
        offset_s = round(start_s - float(actual.times_s[0]))
        issue_s, target_s = issue_s + offset_s, target_s + offset_s
    shift_steps = _shift_steps(source, step_s)
    if shift_steps:
        period_s = n_steps * step_s
        rel_issue, rel_target = issue_s - start_s, target_s - start_s
        inside = (rel_issue >= 0) & (rel_issue < period_s) & (rel_target >= 0)
        inside &= rel_target + target_step_s <= period_s
        new_issue = start_s + np.mod(rel_issue + shift_steps * step_s, period_s)
        new_target = start_s + np.mod(rel_target + shift_steps * step_s, period_s)
        keep = inside & np.isclose(new_target - new_issue, target_s - issue_s)
        order = np.lexsort((new_target[keep], new_issue[keep]))
        issue_s, target_s, values = new_issue[keep][order], new_target[keep][order], values[keep][order]

    k = epoch_steps
    epoch_s = k * step_s
    n_epochs = math.ceil(n_steps / k)
    if issue_s.size == 0:
        return np.full((n_epochs, 1), np.nan)
    n_leads = max(1, math.ceil(float(np.max(target_s + target_step_s - issue_s)) / epoch_s - 1e-9))
    out = np.full((n_epochs, n_leads), np.nan)

    # Pad each issue's targets into a row of a (G, R) table.
    issues, first, counts = np.unique(issue_s, return_index=True, return_counts=True)
    group = np.repeat(np.arange(issues.size), counts)
    col = np.arange(issue_s.size) - first[group]
    width = int(counts.max())
    starts = np.full((issues.size, width), np.nan)
    fracs = np.zeros((issues.size, width))
    starts[group, col] = target_s
    fracs[group, col] = values

    epoch_start_s = start_s + epoch_s * np.arange(n_epochs, dtype=np.float64)
    issue_of_epoch = np.searchsorted(issues, epoch_start_s + 1e-6, side="right") - 1
    epochs = np.flatnonzero(issue_of_epoch >= 0)
    n_ahead = n_leads * k  # steps from each epoch's start
    offsets_s = step_s * np.arange(n_ahead, dtype=np.float64)
    chunk = max(1, 4_000_000 // (width * n_ahead))
    for lo in range(0, epochs.size, chunk):
        ee = epochs[lo : lo + chunk]
        a = starts[issue_of_epoch[ee]][:, :, None]  # (c, R, 1)
        v = fracs[issue_of_epoch[ee]][:, :, None]
        s = (epoch_start_s[ee][:, None] + offsets_s)[:, None, :]  # (c, 1, J)
        overlap = np.minimum(a + target_step_s, s + step_s) - np.maximum(a, s)
        overlap = np.where(np.isnan(overlap), 0.0, np.maximum(overlap, 0.0))
        covered = overlap.sum(axis=1)
        mean_frac = (overlap * v).sum(axis=1) / step_s
        mean_frac[np.abs(covered - step_s) > 1e-6 * step_s] = np.nan
        mean_frac[ee[:, None] * k + np.arange(n_ahead) >= n_steps] = np.nan
        surplus = np.maximum(mean_frac * source.capacity_w - base_load_w, 0.0)  # NaN stays NaN
        out[ee] = surplus.reshape(ee.size, n_leads, k).mean(axis=2)
    return out


def _carbon(
    spec: ScenarioSpec, site: SiteSpec, base: Path, start_s: float, step_s: float, n: int
) -> FloatArray:
    if site.carbon is None:
        return np.full(n, spec.default_carbon_g_per_kwh)
    if site.carbon.type == "constant":
        return np.full(n, float(site.carbon.g_per_kwh or 0.0))
    path = str((base / str(site.carbon.path)).resolve())
    return _grid(_load_trace("carbon", path, ""), site.carbon, start_s, step_s, n, "hold")


def window_lengths_s(world: World, power_w: float) -> dict[str, FloatArray]:
    """Per site, the lengths of runs of steps whose surplus covers ``power_w`` (the renewable windows)."""
    return {
        site.name: np.asarray(
            traces.window_lengths_s(site.surplus_w >= power_w, world.step_s), dtype=np.float64
        )
        for site in world.sites
    }


def describe(spec: ScenarioSpec) -> dict[str, Any]:
    """A short JSON-able description for listings."""
    return {
        "name": spec.name,
        "description": spec.description,
        "sites": [s.name for s in spec.sites],
        "start": spec.start.isoformat(),
        "duration": spec.duration,
        "step": spec.step,
        "jobs": spec.jobs.count,
        "forecast": spec.forecast.type,
    }
