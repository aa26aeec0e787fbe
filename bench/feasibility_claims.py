"""The paper's feasibility claims (a) and (b), measured over its ranges and printed as JSON.

(a) Energy break-even within minutes: the largest break-even time E_mig / P_job over checkpoints of
    1-100 GB and links of 1-100 Gbit/s, for several network energies e_net; and the e_net above which a
    100 GB move needs more than an hour of green running to pay back, or fails the energy check in a
    2.5 h window.
(b) Time binds before energy: over the same grid and windows of 2.5-9.5 h, for how many points the time
    check limits the movable checkpoint first (S_max,time <= S_max,energy), and how many (S, B, T_w) pass
    the energy check but fail the time check (never the other way round at the default e_net).

Usage: python bench/feasibility_claims.py [--points 41]
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from greenferry.core.feasibility import (
    MigrationParams,
    break_even_s,
    energy_feasible,
    max_checkpoint_bytes,
    max_checkpoint_bytes_energy,
    time_feasible,
)

GB = 1e9
E_NET_J_PER_BYTE = {
    "10 nJ/bit (equipment level, default)": 8e-8,
    "100 nJ/bit": 8e-7,
    "0.006 kWh/GB": 2.16e-5,
    "0.06 kWh/GB (2015 Internet average, Aslan et al.)": 2.16e-4,
}
WINDOWS_S = (2.5 * 3600.0, 5.0 * 3600.0, 9.5 * 3600.0)


def claims(points: int) -> dict[str, object]:
    """Both claims over a log-spaced (S, B) grid of ``points`` x ``points``."""
    size = np.logspace(np.log10(1 * GB), np.log10(100 * GB), points)[:, None]
    bandwidth = np.logspace(9, 11, points)[None, :]
    base = MigrationParams()
    out: dict[str, object] = {
        "grid": {"checkpoint_gb": [1, 100], "bandwidth_gbps": [1, 100], "points": points}
    }
    break_even: dict[str, object] = {}
    for label, e_net in E_NET_J_PER_BYTE.items():
        params = base.model_copy(update={"network_energy_j_per_byte": e_net})
        t_be = np.asarray(break_even_s(size, bandwidth, params))
        break_even[label] = {
            "max_break_even_s": float(t_be.max()),
            "median_break_even_s": float(np.median(t_be)),
            "break_even_100gb_1gbps_s": float(break_even_s(100 * GB, 1e9, params)),
            "energy_feasible_share_2_5h": float(
                np.mean(energy_feasible(size, bandwidth, WINDOWS_S[0], params))
            ),
        }
    out["a_break_even"] = break_even
    # e_net at which a 100 GB move at 100 Gbit/s (the transfer term smallest) takes an hour to pay back.
    transfer_s = 8 * 100 * GB / (base.transfer_efficiency * 1e11)
    fixed_j = base.job_power_w * base.overhead_s + base.idle_power_w * transfer_s
    e_net_1h = (base.job_power_w * 3600.0 - fixed_j) / (100 * GB)
    out["a_e_net_for_1h_break_even_100gb_j_per_byte"] = e_net_1h
    out["a_e_net_for_1h_break_even_100gb_kwh_per_gb"] = e_net_1h * GB / 3.6e6
    internet = base.model_copy(update={"network_energy_j_per_byte": 2.16e-4})
    per_window: dict[str, object] = {}
    for window_s in WINDOWS_S:
        s_time = np.asarray(max_checkpoint_bytes(window_s, bandwidth, base))
        s_energy = np.asarray(max_checkpoint_bytes_energy(window_s, bandwidth, base))
        ok_t = np.asarray(time_feasible(size, bandwidth, window_s, base))
        ok_e = np.asarray(energy_feasible(size, bandwidth, window_s, base))
        per_window[f"{window_s / 3600:g}h"] = {
            "time_limits_first_share": float(np.mean(s_time <= s_energy)),
            "time_limits_first_share_at_0_06_kwh_per_gb": float(
                np.mean(s_time <= np.asarray(max_checkpoint_bytes_energy(window_s, bandwidth, internet)))
            ),
            "s_max_time_gb_at_1gbps": float(max_checkpoint_bytes(window_s, 1e9, base)) / GB,
            "s_max_energy_gb_at_1gbps": float(max_checkpoint_bytes_energy(window_s, 1e9, base)) / GB,
            "time_feasible_share": float(ok_t.mean()),
            "energy_ok_but_time_fails": int(np.sum(ok_e & ~ok_t)),
            "time_ok_but_energy_fails": int(np.sum(ok_t & ~ok_e)),
        }
    out["b_time_binds_first"] = per_window
    return out


def main(argv: list[str] | None = None) -> int:
    """Print the figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--points", type=int, default=41, help="grid points per axis (log-spaced)")
    args = parser.parse_args(argv)
    print(json.dumps(claims(args.points), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
