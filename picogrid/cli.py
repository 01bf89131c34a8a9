"""The ``picogrid`` console command: one entry point for the lab's jobs.

    picogrid demo [--exit]        a real day on the HIL bench with the edge and the dashboard
    picogrid hil                  only the bench: plant + six boards, prints their ports
    picogrid web --db FILE        the dashboard over an existing store
    picogrid plan --site FILE     one tick planned from a site file: setpoints and reasons
    picogrid site init|check FILE a commented site file for a new site; validate one
    picogrid data check FILE      read and validate a time series of your own (CSV, Parquet)
    picogrid train ...            train the forecasters and export them to ONNX
    picogrid evaluate ...         policies over many real days; `evaluate forecasts` for models
    picogrid bench [NAME ...]     benchmarks (tools/bench.py), ratios against in-run baselines
    picogrid flash ... / boards   flash Picos with mpremote; list attached Picos
    picogrid screenshots          a PNG of every dashboard page
"""

import argparse
import logging
import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_RUN_DIR = REPO / "var" / "demo"


def _summary_lines(s):
    """The end-of-day summary as aligned text lines."""
    def f(key, unit="", scale=1.0, fmt="%10.2f"):
        v = s.get(key)
        return (fmt % (v * scale) if v is not None else "%10s" % "-") + (" " + unit if unit else "")

    measured = "cost_mpc_perfect_forecast" in s
    lines = ["", "Day summary: MPC, naive rule%s measured on %s identical benches, same day;" % (
                 " and the MPC with perfect forecasts" if measured else "", "three" if measured else "two"),
             "perfect foresight = the optimiser's model solved on the day's true data", ""]
    lines.append("  load    served [J]   shed [J]")
    for l in ("load1", "load2", "load3"):
        lines.append("  %-6s %s %s" % (l, f(l + "_served_energy_j"), f(l + "_shed_energy_j")))
    if s.get("ticks_incomplete_mpc"):
        lines.append("  (energies over the metered ticks: %d ticks lack a board's reading, their costs are unknown)"
                     % s["ticks_incomplete_mpc"])
    lines += [
        "",
        "  grid import        %s J" % f("import_energy_j"),
        "  grid export        %s J" % f("export_energy_j"),
        "  PV used/available  %s / %s J" % (f("pv_energy_j"), f("pv_available_energy_j")),
        "  storage throughput %s J" % f("storage_throughput_j"),
        "  deferrable jobs    %s J delivered by MPC, %s J short (%d jobs)" % (
            f("deferrable_energy_j"), f("deferrable_shortfall_j", fmt="%.2f"), s.get("deferrable_jobs", 0)),
        "",
        "  cost [cents]        total (bill + shed + cycling + jobs)   bill (import - export)",
        "    MPC (measured)    %s %33s" % (f("cost_mpc"), f("bill_mpc")),
        "    naive (measured)  %s %33s" % (f("cost_naive"), f("bill_naive")),
        "    naive (model)     %s" % f("cost_naive_model"),
        "    perfect foresight %s %33s" % (f("cost_perfect_foresight"), f("bill_perfect_foresight")),
    ] + ([
        "    MPC, perfect fcst %s %33s   (measured, third bench; %d fallback ticks)" % (
            f("cost_mpc_perfect_forecast"), f("bill_mpc_perfect_forecast"),
            s.get("ticks_fallback_mpc_perfect_forecast", 0)),
    ] if measured else []) + [
        "  savings capture     %s %%  (against the naive rule on the model: %s %%)" % (
            f("savings_capture", scale=100.0, fmt="%10.1f"),
            f("savings_capture_vs_model_naive", scale=100.0, fmt="%.1f")),
    ] + ([
        "    all measured      %s %%  (of the saving of the MPC with perfect forecasts, on the bench%s)" % (
            f("savings_capture_vs_mpc_perfect_forecast", scale=100.0, fmt="%10.1f"),
            "; none: that bench had fallback ticks" if s.get("ticks_fallback_mpc_perfect_forecast") else ""),
    ] if measured else []) + [
        "",
        "  MPC solve time p50 %s ms, p99 %s ms wall; %s / %s ms CPU (%d solved, %d fallback ticks)" % (
            f("solve_time_p50_ms", fmt="%.3f"), f("solve_time_p99_ms", fmt="%.3f"),
            f("solve_cpu_p50_ms", fmt="%.3f"), f("solve_cpu_p99_ms", fmt="%.3f"),
            s.get("ticks_solved", 0), s.get("ticks_fallback", 0)),
        "  bus energy balance: max |residual| %s J over %d metered ticks" % (
            f("balance_residual_max_j", fmt="%.3f"), s.get("ticks_metered", 0)),
    ]
    return lines


def _start_dashboard(db, port):
    """The dashboard on ``port``, or on any free port when that one is taken (another demo?).

    Returns ``(url, stop)``.
    """
    from picogrid.web.server import start_background

    try:
        return start_background(str(db), port=port)
    except OSError:
        return start_background(str(db), port=0)


def _keep_serving(exit_now):
    """After the summary the dashboard stays up until Ctrl-C, unless asked to exit."""
    if exit_now:
        return
    print("Dashboard keeps serving; Ctrl-C to stop.", flush=True)
    while True:
        time.sleep(1)


def _feed_memory(args, run_dir):
    """The lab-feed days kept across runs (``--feed-memory``, default in the run folder)."""
    from picogrid.edge.sources.feedmemory import FeedMemory

    path = pathlib.Path(args.feed_memory) if args.feed_memory else run_dir / "labfeed_memory.json"
    print("Feed memory (the days earlier runs saw): %s" % path, flush=True)
    return FeedMemory(path)


def _feed_site_run_dir(args, load_site):
    """``(feed, site, run_dir)`` of a command with ``--feed``/``--feed-speed``, ``--site``,
    ``--tick-s`` and ``--run-dir``: the lab feed client (None without ``--feed``; its clock
    ``--feed-speed`` times real time, and a tick of 5 s over that unless ``--tick-s`` says),
    the site file and the run folder, made."""
    feed = None
    if args.feed:
        from picogrid.edge.sources.labfeed import LabFeed, TICK_S
        speed = float(args.feed_speed)
        feed = LabFeed(args.feed, clock=(lambda: time.time() * speed) if speed != 1 else None)
        args.tick_s = args.tick_s or TICK_S / speed
    run_dir = pathlib.Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return feed, load_site(args.site, tick_s=args.tick_s), run_dir


def cmd_demo(args):
    from picogrid.hil.day import Day, load_site

    feed, site, run_dir = _feed_site_run_dir(args, load_site)
    db = run_dir / "picogrid.sqlite"
    if db.exists():
        for suffix in ("", "-wal", "-shm"):
            pathlib.Path(str(db) + suffix).unlink(missing_ok=True)
    scenario_path, data_notes = None, []
    if args.data:
        from picogrid.hil.day import data_scenario
        if feed is not None or args.latitude is None or args.longitude is None:
            raise SystemExit("picogrid demo --data: needs --latitude and --longitude (clear-sky GHI), and no --feed")
        print("Preparing the scenario of %s ..." % args.data, flush=True)
        try:
            scenario_path, args.day, data_notes = data_scenario(site, run_dir, args.data, args.latitude,
                                                                args.longitude, args.altitude, args.day,
                                                                args.currency_factor)
        except ValueError as exc:      # a DataError too: every problem of the file
            raise SystemExit("picogrid demo --data: %s" % exc)
        for line in data_notes:
            print("  " + line, flush=True)
    elif any(v is not None for v in (args.latitude, args.longitude, args.altitude)) or args.currency_factor != 1.0:
        raise SystemExit("picogrid demo: --latitude, --longitude, --altitude and --currency-factor are for --data FILE")
    args.day = args.day or "2013-07-16"
    if feed is None:
        if scenario_path is None:
            print("Preparing the real-data scenario for %s ..." % args.day, flush=True)
    else:
        print("Lab market feed %s: the day starts at the feed's next day boundary" % args.feed, flush=True)
    day = Day(site, run_dir, day=args.day, n_run_ticks=args.ticks, db_path=db, feed=feed,
              feed_memory=_feed_memory(args, run_dir) if feed is not None else None,
              perfect_bench=feed is None and not args.no_perfect_bench, scenario_path=scenario_path)
    url, stop_web = _start_dashboard(db, args.port)
    print("Dashboard (live): %s" % url, flush=True)
    print("Store: %s   logs and board folders: %s" % (db, run_dir), flush=True)
    n = int(day.site["bench"]["n_ticks"])
    t_start = time.time()
    try:
        with day:
            print("Bench up: six MicroPython boards on %s" % ", ".join(day.bench.ports.values()), flush=True)

            def progress(k):
                d = day.runner.statuses[-1]
                print("  tick %2d/%d  %-18s solve %.2f ms" % (k + 1, n, d, 1e3 * day.runner.solve_times_s[-1]),
                      flush=True)

            summary = day.run(progress)
        for line in _summary_lines(summary):
            print(line)
        if data_notes:
            print("\n  your data (demo --data): " + "\n    ".join(data_notes))
        plot = run_dir / "dispatch.png"
        try:
            from picogrid.hil.plot import plot_day
            plot_day(db, plot)
            print("\n  dispatch chart: %s" % plot)
        except ImportError as exc:
            print("\n  (no plot: %s)" % exc)
        print("  day took %.0f s; dashboard: %s" % (time.time() - t_start, url), flush=True)
        _keep_serving(args.exit)
    except KeyboardInterrupt:
        pass
    finally:
        stop_web()
    return 0


def cmd_hil(args):
    from picogrid.hil.bench import Bench
    from picogrid.hil.day import load_site

    site = load_site(args.site)
    run_dir = pathlib.Path(args.run_dir)
    with Bench(site, run_dir, time.time(), float(site["bench"]["tick_s"]), [args.sun]) as bench:
        for name, port in bench.ports.items():
            print("%-8s %s" % (name, port))
        print("Bench running (sun %.0f %%); Ctrl-C to stop." % (100 * args.sun), flush=True)
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    return 0


# Commands whose options belong to the module that does the work: (module, function, help).
DELEGATED = {
    "train": ("picogrid.edge.evaluation.energy_calibration_fit", "train_main", "train the forecasters and export ONNX"),
    "evaluate": ("picogrid.edge.evaluation.command", "main", "policies over many real days ('evaluate forecasts': models)"),
    "bench": ("picogrid.tools.bench", "main", "run benchmarks (tools/bench.py)"),
    "flash": ("picogrid.tools.flash", "main", "compile and copy firmware + board config with mpremote"),
    "boards": ("picogrid.tools.flash", "boards_main", "list attached Picos"),
    "screenshots": ("picogrid.tools.screenshots", "main", "a PNG of every dashboard page"),
    "fuzz": ("picogrid.tools.fuzz", "main", "fuzz the wire decoder and the feed client (tools/fuzz.py)"),
    "soak": ("picogrid.hil.soak", "main", "the edge on the HIL bench for a long time under scripted faults"),
    "site": ("picogrid.tools.site_cli", "main", "write a commented site TOML ('site init FILE') or check one ('site check FILE')"),
    "data": ("picogrid.models.user_data", "main", "check a time-series file of your own ('data check FILE', docs/own-data.md)"),
    "pico": ("picogrid.hil.rp2040", "main", "one emulated RP2040 Pico running MicroPython; prints its serial port (docs/rp2040.md)"),
}


def cmd_delegated(args):
    import importlib

    if args.command == "evaluate" and args.extra[:1] == ["forecasts"]:
        module, func, args.extra = "picogrid.models.evaluate", "main", args.extra[1:]
    else:
        module, func, _ = DELEGATED[args.command]
    return getattr(importlib.import_module(module), func)(args.extra) or 0


def cmd_edge(args):
    """The edge on real boards (ports in the site file): day after day, summaries, dashboard."""
    import signal

    from picogrid.edge.control.service import EdgeService
    from picogrid.edge.site import load_site

    # a file-size limit or quota must fail the store's writes (buffered, alarmed), not kill the controller
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    feed, site, run_dir = _feed_site_run_dir(args, load_site)
    if feed is not None:
        from picogrid.edge.sources.feedsource import FeedForecaster, feed_site, feed_source, next_day_start
        site = feed_site(site)
        source = feed_source(site, feed, _feed_memory(args, run_dir))
        forecaster = FeedForecaster(source)
        t0 = lambda: next_day_start(feed, float(site["bench"]["tick_s"]), 3.0)   # noqa: E731
    else:
        from picogrid.edge.forecasting.forecast import Forecaster
        from picogrid.hil.day import replay_source
        source = replay_source(site, run_dir, args.day)
        forecaster = Forecaster()
        t0 = lambda: time.time() + 3.0   # noqa: E731
    if args.ticks:
        site["bench"]["n_ticks"] = args.ticks
    service = EdgeService(site, run_dir / "picogrid.sqlite", source, forecaster, t0, resume=args.resume)
    if service.resumed is not None:
        print("Resumed run %d at tick %d (t0 %.1f)" % (service.resumed.run_id, service.first_tick, service.t0),
              flush=True)
    try:
        url, stop_web = _start_dashboard(run_dir / "picogrid.sqlite", args.port)
    except BaseException:
        service.stop(status="failed")
        raise
    print("Edge on %s; dashboard %s" % (", ".join("%s=%s" % (n, l.port) for n, l in service.links.items()), url),
          flush=True)
    try:
        missing = service.wait_hello()
        if missing:
            print("no hello yet from %s: running without them" % ", ".join(missing), flush=True)
        days = 0
        while True:
            summary = service.run(lambda k: print("  tick %d: %s" % (k + 1, service.runner.statuses[-1]),
                                                  flush=True))
            for line in _summary_lines(summary):
                print(line)
            days += 1
            if args.days and days >= args.days:
                break
            service.next_day()
        _keep_serving(args.exit)
    except KeyboardInterrupt:
        pass
    finally:
        service.stop()
        stop_web()
    return 0


def cmd_labfeed_server(args):
    from picogrid.models.labfeed_server import serve_days

    speed = float(args.speed)
    teaching = args.kind == "teaching"
    day = args.day if teaching else args.day or "2013-07-16"   # a --day with teaching days is refused
    try:
        server = serve_days(day, args.days, clock=lambda: time.time() * speed, kind=args.kind, seed=args.seed)
    except ValueError as exc:
        raise SystemExit("picogrid labfeed-server: %s" % exc) from exc
    what = ("%d teaching-server days (synthetic, seed %d; teaching day 0 first, as its /yesterday)"
            % (args.days, args.seed) if teaching
            else "%d real days from %s (the day before first, as its /yesterday)" % (args.days, day))
    print("Lab market feed with %s at %s (clock x%g); Ctrl-C to stop" % (what, server.url, speed), flush=True)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        server.close()
    return 0


def cmd_plan(args):
    from picogrid.edge.control.plan_tick import format_plan, plan_tick, tick_inputs
    from picogrid.edge.site import load_site

    try:
        site = load_site(args.site)
        demand = None if args.demand_w is None else [float(x) for x in args.demand_w.split(",")]
        inputs = tick_inputs(site, args.energy_j, args.pv_w, demand, args.import_price, args.export_price)
    except (OSError, ValueError, KeyError) as exc:
        print(f"picogrid plan: {args.site}: {exc}", file=sys.stderr)
        return 2
    decision, sp = plan_tick(site, inputs, args.islanded)
    print("\n".join(format_plan(site, inputs, decision, sp, args.islanded)))
    return 0 if decision.ok else 1


def cmd_web(args):
    from picogrid.web.server import start_background
    url, stop = start_background(args.db, port=args.port)
    print("Dashboard: %s (Ctrl-C to stop)" % url, flush=True)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        stop()
    return 0


def _positive(kind):
    def check(text):
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError("must be > 0, got %s" % text)
        return value
    return check


def _fraction(text):
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be within 0..1, got %s" % text)
    return value


def build_parser():
    parser = argparse.ArgumentParser(prog="picogrid", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="a real day on the HIL bench with the edge and the dashboard")
    p.add_argument("--exit", action="store_true", help="exit after the summary (for scripts and CI)")
    p.add_argument("--day", default=None, help="real day to replay (YYYY-MM-DD, 2012..2013; default 2013-07-16); "
                                              "with --data a day of the file (default its last)")
    p.add_argument("--data", default=None, metavar="FILE",
                   help="run a day of your own time series (docs/own-data.md), scaled to the bench (stated)")
    p.add_argument("--latitude", type=float, default=None, help="--data: the site's latitude [deg N]")
    p.add_argument("--longitude", type=float, default=None, help="--data: the site's longitude [deg E]")
    p.add_argument("--altitude", type=float, default=None, help="--data: the site's altitude [m] (default: pvlib's)")
    p.add_argument("--currency-factor", type=float, default=1.0,
                   help="--data: site currency units per unit of the file's prices (100: a file in EUR)")
    p.add_argument("--ticks", type=_positive(int), default=None, help="run only the first N ticks")
    p.add_argument("--tick-s", type=_positive(float), default=None, help="tick duration [s] (site default 2.5)")
    p.add_argument("--site", default=None, help="site TOML (default: edge/sites/lab.toml)")
    p.add_argument("--run-dir", default=str(DEFAULT_RUN_DIR))
    p.add_argument("--port", type=int, default=8050, help="dashboard port (0 = any free port)")
    p.add_argument("--feed", default=None, help="use the lab market feed at this URL instead of the replayed day")
    p.add_argument("--no-perfect-bench", action="store_true",
                   help="no third bench running the MPC with perfect forecasts (a replayed day has one: "
                        "the MPC on the true future measured under the bench's physics)")
    p.add_argument("--feed-speed", type=_positive(float), default=1.0,
                   help="the feed's clock runs this many times faster than real time (local feed only)")
    p.add_argument("--feed-memory", default=None,
                   help="JSON file of the feed days seen, kept across runs (default RUN_DIR/labfeed_memory.json)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("edge", help="run the edge on real boards: ports/links from the site file")
    p.add_argument("--site", required=True, help="site TOML with [boards.X] port or link")
    p.add_argument("--day", default="2013-07-16", help="real day to replay when there is no feed")
    p.add_argument("--feed", default=None, help="lab market feed URL (source of sun, demand and prices)")
    p.add_argument("--feed-memory", default=None,
                   help="JSON file of the feed days seen, kept across runs (default RUN_DIR/labfeed_memory.json)")
    p.add_argument("--ticks", type=_positive(int), default=None)
    p.add_argument("--tick-s", type=_positive(float), default=None)
    p.add_argument("--run-dir", default=str(REPO / "var" / "edge"))
    p.add_argument("--port", type=int, default=8050, help="dashboard port")
    p.add_argument("--exit", action="store_true", help="exit after the last day's summary")
    p.add_argument("--days", type=int, default=1, help="days to run one after another (0: until stopped)")
    p.add_argument("--resume", action="store_true",
                   help="carry on with the run the store left running, if its day is not over (after a crash)")
    p.add_argument("--feed-speed", type=_positive(float), default=1.0,
                   help="the feed's clock runs this many times faster than real time (a local feed only)")
    p.set_defaults(func=cmd_edge)

    p = sub.add_parser("labfeed-server", help="serve real (or teaching-server) days through the lab market feed API "
                                              "on loopback")
    p.add_argument("--kind", choices=("real", "teaching"), default="real",
                   help="real: days replayed from real data (default); teaching: synthetic days modelled on an "
                        "independent teaching server (noisy integer prices 10-150 c/J, odd deferrable windows)")
    p.add_argument("--day", default=None, help="first real day served (YYYY-MM-DD; default 2013-07-16; real days only)")
    p.add_argument("--days", type=_positive(int), default=7)
    p.add_argument("--seed", type=int, default=0, help="seed of the teaching days (default 0)")
    p.add_argument("--speed", type=_positive(float), default=1.0,
                   help="clock speed-up (same as the edge's --feed-speed)")
    p.set_defaults(func=cmd_labfeed_server)

    p = sub.add_parser("plan", help="plan one tick from a site file and print the setpoints and reasons")
    p.add_argument("--site", required=True, help="site TOML")
    p.add_argument("--energy-j", type=float, default=None, help="stored energy now [J] (default: half full)")
    p.add_argument("--pv-w", type=float, default=None, help="available PV [W] (default: half the capability)")
    p.add_argument("--demand-w", default=None,
                   help="each load's demand [W], comma-separated (default: half each rating)")
    p.add_argument("--import-price", type=float, default=None,
                   help="import price per J (default: the site's price_scale_per_j)")
    p.add_argument("--export-price", type=float, default=None, help="export price per J (default: a third of import)")
    p.add_argument("--islanded", action="store_true", help="the grid is lost")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("hil", help="start the plant and six virtual boards only")
    p.add_argument("--site", default=None)
    p.add_argument("--run-dir", default=str(REPO / "var" / "hil"))
    p.add_argument("--sun", type=_fraction, default=0.8, help="PV availability 0..1")
    p.set_defaults(func=cmd_hil)

    for name, (_, _, text) in DELEGATED.items():
        p = sub.add_parser(name, help=text, add_help=False)
        p.set_defaults(func=cmd_delegated, passes_options=True)

    p = sub.add_parser("web", help="serve the dashboard over a store")
    p.add_argument("--db", required=True)
    p.add_argument("--port", type=int, default=8050)
    p.set_defaults(func=cmd_web)
    return parser


def main(argv=None):
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "passes_options", False):
        parser.error("unrecognized arguments: %s" % " ".join(extra))
    args.extra = extra
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
