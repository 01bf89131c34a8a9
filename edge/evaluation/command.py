"""``picogrid evaluate``: the command line over the replayed profiles and the lab-feed days."""

from __future__ import annotations

import argparse
import logging
import sys
import time
import tomllib

from picogrid.edge.evaluation import feed_evaluate
from picogrid.edge.evaluation.evaluate import PROFILE_SETS, PROFILES, evaluate_profile, load_site, plot_day, report


def parse_overrides(items):
    """``{"key": value}`` from ``["key=value", ...]``, each value parsed as TOML.

    Raises
    ------
    ValueError
        If an item has no ``=`` or its value is not valid TOML.
    """
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set wants KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"--set {key.strip()}: {value!r} is not a TOML value ({exc})") from exc
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(prog="picogrid evaluate", description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=int, default=30, help="real days per profile (>= 1; default 30)")
    ap.add_argument("--first-day", default="2013-07-01", help="first day (default: start of the test split)")
    ap.add_argument("--profile", choices=tuple(PROFILE_SETS) + PROFILES + ("labfeed",), default="all",
                    help="lab, site (replayed real days), labfeed (lab-feed days read through the "
                         "edge's feed client, edge/evaluation/feed_evaluate.py); both = lab and site; all "
                         "(default) = the three")
    ap.add_argument("--reserve-every", type=int, default=3,
                    help="site: run the MPC with the reserve on every k-th day only (default 3)")
    ap.add_argument("--workers", type=int, default=2,
                    help="processes planning the days (default 2, the cores of the reference machine); "
                         "one forecaster runs through the days in order, so the result does not depend on it")
    ap.add_argument("--feed-kind", choices=("both", "real", "teaching"), default="both",
                    help="labfeed: the kind of lab-feed days, real (replayed real data) or teaching (a synthetic "
                         "teaching server, edge/evaluation/feed_evaluate.py); both (default) runs and reports each")
    ap.add_argument("--no-compare", action="store_true",
                    help="skip pymgrid's MPC (rows pymgrid_own, pymgrid_perfect; about half the run time)")
    ap.add_argument("--no-emhass", action="store_true",
                    help="skip EMHASS (rows emhass_dayahead_own, emhass_mpc_own; its site MPC takes ~1 s a tick)")
    ap.add_argument("--plot", help="write one day's dispatch (site if run, else lab) as PNG here")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override an optimiser setting of the site file (an MpcConfig field, the "
                         "value in TOML syntax), e.g. --set scenario_spread=0.7; repeatable")
    data = ap.add_argument_group("your own data (docs/own-data.md; edge/evaluation/user_evaluate.py)")
    data.add_argument("--data", metavar="FILE", help="evaluate on this time series (CSV, Parquet) instead of the "
                      "replayed profiles: history days first, the days after them scored")
    data.add_argument("--site", metavar="TOML", help="--data: the site file (default edge/sites/site.toml, the home)")
    data.add_argument("--latitude", type=float, help="--data: the site's latitude [deg N] (clear-sky GHI)")
    data.add_argument("--longitude", type=float, help="--data: the site's longitude [deg E]")
    data.add_argument("--altitude", type=float, help="--data: the site's altitude [m] (default: pvlib's look-up)")
    data.add_argument("--history-days", type=int,
                      help="--data: days before the first scored one, unscored (default: the forecasters' lags + 7)")
    data.add_argument("--currency-factor", type=float, default=1.0,
                      help="--data: site currency units per unit of the file's prices (100: a file in EUR)")
    data.add_argument("--scale", choices=("none", "site"), default="none",
                      help="--data: site = scale PV and loads to the site's ratings (factors from the history days)")
    args = ap.parse_args(argv)
    if args.data is not None:
        return _main_data(ap, args, argv or sys.argv[1:])
    given = [f"--{k.replace('_', '-')}" for k in ("site", "latitude", "longitude", "altitude", "history_days")
             if getattr(args, k) is not None] + (["--scale"] if args.scale != "none" else []) + (
        ["--currency-factor"] if args.currency_factor != 1.0 else [])
    if given:
        ap.error(f"{', '.join(given)}: only with --data FILE")
    if args.days < 1:
        ap.error("--days must be >= 1")
    profiles = PROFILE_SETS.get(args.profile, (args.profile,))
    if args.feed_kind != "both" and "labfeed" not in profiles:
        ap.error(f"--feed-kind is for the labfeed profile, not --profile {args.profile}")
    if profiles == ("labfeed",):    # one process, no reserve run, no plot: say so instead of ignoring
        given = [f for f, v, default in (("--plot", args.plot, None), ("--workers", args.workers, 2),
                                        ("--reserve-every", args.reserve_every, 3)) if v != default]
        if given:
            ap.error(f"--profile labfeed takes no {', '.join(given)}")
    try:
        overrides = parse_overrides(args.set)
        for profile in profiles:
            load_site("lab" if profile == "labfeed" else profile, overrides)
        if "labfeed" in profiles:
            feed_evaluate.check_overrides(overrides)
    except ValueError as exc:
        ap.error(str(exc))
    if overrides:
        print(f"overrides of the site file: {overrides}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # forecaster fallbacks and soft-constraint notes would flood the log: one line per tick
    for name in ("picogrid.edge.forecasting.forecast", "picogrid.edge.optimizer.optimize"):
        logging.getLogger(name).setLevel(logging.ERROR)
    t0 = time.perf_counter()

    def progress(profile, done, total):
        print(f"\r{profile}: day {done}/{total}", end="" if done < total else "\n", file=sys.stderr, flush=True)

    results = {}
    for profile in (p for p in profiles if p != "labfeed"):
        results[profile] = evaluate_profile(profile, args.first_day, args.days, progress,
                                            max(1, args.reserve_every), overrides, not args.no_compare,
                                            args.workers, emhass=not args.no_emhass)
    for profile, res in results.items():
        report(profile, res, sys.stdout)
    if args.plot and results:
        last = list(results)[-1]
        plot_day(results[last]["example"], results[last]["cfg"], args.plot)
        print(f"dispatch plot of {results[last]['example'][0]} ({last}): {args.plot}")
    if "labfeed" in profiles:
        feed_evaluate.main(args.first_day, args.days, overrides, sys.stdout, progress, not args.no_compare,
                           feed_evaluate.FEED_KINDS if args.feed_kind == "both" else (args.feed_kind,))
    print(f"evaluate took {time.perf_counter() - t0:.0f} s")
    return 0


def _main_data(ap, args, argv):
    """``evaluate --data FILE``: :func:`picogrid.edge.evaluation.user_evaluate.evaluate_data`."""
    from picogrid.edge.evaluation import user_evaluate
    from picogrid.models.user_data import DataError

    given = [f for f in ("--profile", "--first-day", "--feed-kind", "--workers", "--reserve-every")
             if any(a == f or a.startswith(f + "=") for a in argv)]
    if given:
        ap.error(f"--data takes no {', '.join(given)} (the file's days, one process, no reserve run)")
    if args.latitude is None or args.longitude is None:
        ap.error("--data needs --latitude and --longitude (the PV forecaster reads the site's clear-sky GHI)")
    days = args.days if any(a == "--days" or a.startswith("--days=") for a in argv) else None
    if days is not None and days < 1:
        ap.error("--days must be >= 1")
    try:
        overrides = parse_overrides(args.set)
    except ValueError as exc:
        ap.error(str(exc))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("picogrid.edge.forecasting.forecast", "picogrid.edge.optimizer.optimize"):
        logging.getLogger(name).setLevel(logging.ERROR)
    t0 = time.perf_counter()

    def progress(label, done, total):
        print(f"\r{label}: day {done}/{total}", end="" if done < total else "\n", file=sys.stderr, flush=True)

    try:
        res = user_evaluate.evaluate_data(args.data, args.latitude, args.longitude, args.site, args.history_days,
                                          days, args.currency_factor, None if args.scale == "none" else args.scale,
                                          overrides, not args.no_compare, progress, args.altitude)
    except (DataError, ValueError, OSError) as exc:
        print(f"picogrid evaluate --data: {exc}", file=sys.stderr)
        return 2
    user_evaluate.report_data(res, sys.stdout)
    if args.plot:
        plot_day(res["example"], res["cfg"], args.plot)
        print(f"dispatch plot of {res['example'][0]}: {args.plot}")
    print(f"evaluate took {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
