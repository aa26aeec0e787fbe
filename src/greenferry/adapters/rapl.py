"""Host CPU package power from Linux RAPL (the powercap sysfs interface, ``/sys/class/powercap``).

Each ``intel-rapl:N`` directory whose ``name`` starts with ``package`` is one CPU package: ``energy_uj``
is a microjoule counter that wraps at ``max_energy_range_uj``. Power is the counter's difference between
two reads divided by the time between them. AMD CPUs appear under the same ``intel-rapl`` names.

Since Linux 5.10 (CVE-2020-8694) ``energy_uj`` is readable by root only; an unreadable counter is logged
once and reads return None, so the daemon runs without host power rather than failing.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_POWERCAP_ROOT", "HostPowerReading", "RaplReader"]

DEFAULT_POWERCAP_ROOT = Path("/sys/class/powercap")
_PACKAGE_DIR_RE = re.compile(r"^intel-rapl:\d+$")  # top-level zones; intel-rapl:0:0 are sub-zones
_UJ_PER_J = 1_000_000


@dataclass(frozen=True, slots=True)
class HostPowerReading:
    """Host CPU power and energy summed over packages.

    ``power_w`` is None on the first read (a rate needs two); ``energy_j`` counts from that first read.
    """

    power_w: float | None
    energy_j: float


@dataclass(slots=True)
class _Package:
    name: str
    energy_path: Path
    max_range_uj: int
    last_uj: int | None = None


class RaplReader:
    """Reads the package energy counters under ``root`` and turns successive reads into power.

    Args:
        root: the powercap directory (a fake tree in tests).
    """

    def __init__(self, root: Path = DEFAULT_POWERCAP_ROOT) -> None:
        self.root = root
        self._packages: list[_Package] | None = None
        self._problem_logged = False
        self._last_s: float | None = None
        self._energy_uj = 0
        self._last_power_w: float | None = None

    def available(self) -> bool:
        """True when at least one package counter exists and every one of them is readable."""
        packages = self._discover()
        if not packages:
            return False
        try:
            for package in packages:
                _read_uj(package.energy_path)
        except (OSError, ValueError) as err:
            self._log_problem(str(err))
            return False
        return True

    def describe(self) -> dict[str, object]:
        """What the reader found (for /v1/status)."""
        packages = self._packages or []
        return {"root": str(self.root), "packages": [p.name for p in packages]}

    def read(self, monotonic_s: float) -> HostPowerReading | None:
        """Read every package counter once.

        Args:
            monotonic_s: the time of this read on a monotonic clock (s), for the power rate.

        Returns:
            Power (None on the first read) and energy since the first read; None when unreadable, logged
            once until a read succeeds again.
        """
        packages = self._discover()
        if not packages:
            return None
        try:
            raw_uj = [_read_uj(p.energy_path) for p in packages]
        except (OSError, ValueError) as err:
            self._log_problem(str(err))
            return None
        if self._problem_logged:
            logger.info("RAPL counters under %s are readable again", self.root)
            self._problem_logged = False
        previous_s = self._last_s
        has_baseline = previous_s is not None and all(p.last_uj is not None for p in packages)
        if has_baseline and previous_s is not None and monotonic_s <= previous_s:
            # No time has passed: keep the baseline so the next rate spans a real interval.
            return HostPowerReading(power_w=self._last_power_w, energy_j=self._energy_uj / _UJ_PER_J)
        delta_uj = 0
        for package, value in zip(packages, raw_uj, strict=True):
            if package.last_uj is not None:
                delta_uj += _difference_uj(package.last_uj, value, package.max_range_uj)
            package.last_uj = value
        self._energy_uj += delta_uj
        if has_baseline and previous_s is not None:
            self._last_power_w = delta_uj / _UJ_PER_J / (monotonic_s - previous_s)
        self._last_s = monotonic_s
        return HostPowerReading(power_w=self._last_power_w, energy_j=self._energy_uj / _UJ_PER_J)

    def _discover(self) -> list[_Package]:
        if self._packages is not None:
            return self._packages
        packages: list[_Package] = []
        try:
            zones = sorted(p for p in self.root.iterdir() if _PACKAGE_DIR_RE.match(p.name))
        except OSError as err:
            self._log_problem(f"{self.root}: {err.strerror or err}")
            return packages  # not cached: the tree may appear later (module loaded after start)
        for zone in zones:
            try:
                name = (zone / "name").read_text(encoding="ascii").strip()
                if not name.startswith("package"):
                    continue  # psys covers the whole platform and would count packages twice
                max_range_uj = _read_uj(zone / "max_energy_range_uj")
            except (OSError, ValueError, UnicodeDecodeError) as err:
                self._log_problem(f"{zone}: {err}")
                continue
            if max_range_uj <= 0:
                self._log_problem(f"{zone}/max_energy_range_uj: {max_range_uj} is not a counter range")
                continue
            packages.append(_Package(name=name, energy_path=zone / "energy_uj", max_range_uj=max_range_uj))
        if not packages and not self._problem_logged:
            self._log_problem(f"{self.root}: no RAPL package domain (intel-rapl:N with name package-*)")
        self._packages = packages
        return packages

    def _log_problem(self, problem: str) -> None:
        if not self._problem_logged:
            logger.info("RAPL unreadable (%s); host CPU power is not measured", problem)
            self._problem_logged = True


def _read_uj(path: Path) -> int:
    text = path.read_text(encoding="ascii").strip()
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{path}: {text[:40]!r} is not an integer") from None
    if value < 0:
        raise ValueError(f"{path}: {value} is negative")
    return value


def _difference_uj(previous_uj: int, current_uj: int, max_range_uj: int) -> int:
    """Counter difference with one wraparound at ``max_range_uj`` allowed."""
    if current_uj >= previous_uj:
        return current_uj - previous_uj
    return max_range_uj - previous_uj + current_uj
