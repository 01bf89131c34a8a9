"""Benchmark: do 20 dashboard viewers on the live stream slow the edge's tick?

Runs the same short real day on the HIL bench twice, as ``picogrid demo`` runs it (the
dashboard served from the edge's own process): once with no viewer, once with ``--clients``
Server-Sent-Events clients (default 20) connected to ``/api/stream`` from a separate
process. It times every ``EdgeRunner.tick`` (read, forecast, solve, send, persist) and
reports p50/p99/max per run and their ratio, plus how many tick events each client got and
how late (from the end of the tick to the client) they arrived.

The baseline is measured in the same invocation on the same machine, so the ratio does not
depend on the machine; a ratio near 1 means the viewers cost the edge nothing measurable.

Usage: ``picogrid bench sse [--clients 20] [--ticks 20] [--tick-s 1.5]``
"""

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import numpy as np

log = logging.getLogger(__name__)


def _client(url, stop_at, out):
    """One viewer: reads the stream until ``stop_at`` (unix s); appends (recv_t, event id)."""
    try:
        with urllib.request.urlopen(url + "api/stream", timeout=30) as stream:
            event_id = None
            while time.time() < stop_at:
                line = stream.readline()
                if not line:
                    break
                if line.startswith(b"id: "):
                    event_id = line[4:].strip().decode()
                elif line.startswith(b"event: tick"):
                    out.append((time.time(), event_id))
    except OSError as exc:
        out.append((time.time(), "error: %s" % exc))


def clients_main(url, n_clients, duration_s):
    """Worker process: ``n_clients`` viewers for ``duration_s``; prints their events as JSON."""
    stop_at = time.time() + duration_s
    received = [[] for _ in range(n_clients)]
    threads = [threading.Thread(target=_client, args=(url, stop_at, received[i]), daemon=True)
               for i in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration_s + 35)
    sys.stdout.write(json.dumps(received))


def run_day(n_clients, ticks, tick_s, run_dir):
    """One short day with the dashboard in-process; returns (tick durations [s], tick end times, clients)."""
    from picogrid.hil.day import Day, load_site
    from picogrid.web.server import start_background

    site = load_site(tick_s=tick_s, n_ticks=ticks, horizon=ticks)
    durations, ends = {}, {}
    with Day(site, run_dir) as day:
        runner = day.runner
        tick = runner.tick

        def timed_tick(k):
            t0 = time.perf_counter()
            try:
                return tick(k)
            finally:
                durations[k] = time.perf_counter() - t0
                ends[k] = time.time()

        runner.tick = timed_tick   # instrumentation only: the real tick runs unchanged
        url, stop = start_background(str(day.db_path))
        worker = None
        try:
            if n_clients:
                duration_s = day.start_delay_s + ticks * tick_s + 5.0
                worker = subprocess.Popen(
                    [sys.executable, "-m", "picogrid.tools.bench_sse", "--worker", url,
                     str(n_clients), str(duration_s)], stdout=subprocess.PIPE, text=True)
            day.run()
        finally:
            stop()   # ends the streams; the worker's clients see EOF
            received = []
            if worker is not None:
                out, _ = worker.communicate(timeout=60)
                received = json.loads(out or "[]")
    return durations, ends, received


def _stats(values_s):
    a = np.asarray(values_s, float) * 1e3
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
            "max_ms": float(a.max()), "n": int(a.size)}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="picogrid bench sse", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--ticks", type=int, default=20)
    parser.add_argument("--tick-s", type=float, default=1.5)
    parser.add_argument("--worker", nargs=3, metavar=("URL", "N", "DURATION_S"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        clients_main(args.worker[0], int(args.worker[1]), float(args.worker[2]))
        return 0
    if args.clients < 1 or args.ticks < 2:
        parser.error("need --clients >= 1 and --ticks >= 2")
    results = {}
    with tempfile.TemporaryDirectory(prefix="picogrid-bench-sse-") as tmp:
        for label, n in (("no viewers", 0), ("%d viewers" % args.clients, args.clients)):
            sys.stdout.write("running %d ticks of %.1f s with %s ...\n" % (args.ticks, args.tick_s, label))
            sys.stdout.flush()
            results[label] = run_day(n, args.ticks, args.tick_s, "%s/%d" % (tmp, n))
    (base, _, _), (loaded, ends, received) = results.values()
    b, l = _stats(list(base.values())), _stats(list(loaded.values()))
    sys.stdout.write("\nedge tick duration (read, forecast, solve, send, persist):\n")
    for label, s in (("no viewers", b), ("%d viewers" % args.clients, l)):
        sys.stdout.write("  %-12s p50 %7.1f ms   p99 %7.1f ms   max %7.1f ms   (%d ticks)\n"
                         % (label, s["p50_ms"], s["p99_ms"], s["max_ms"], s["n"]))
    sys.stdout.write("  ratio        p50 %7.2f      p99 %7.2f\n" % (l["p50_ms"] / b["p50_ms"], l["p99_ms"] / b["p99_ms"]))
    errors = [e for client in received for _, e in client if e and e.startswith("error")]
    per_client = [len({e for _, e in client if e and not e.startswith("error")}) for client in received]
    lat = []
    for client in received:
        seen = set()
        for t_recv, eid in client:
            if not eid or eid.startswith("error") or eid in seen:
                continue
            seen.add(eid)
            tick = int(eid.split(":")[1]) if eid.split(":")[1] else None
            # tick t's dispatch is metered (and its event made) at the end of tick t + 1
            if tick is not None and tick + 1 in ends:
                lat.append(t_recv - ends[tick + 1])
    sys.stdout.write("\nSSE clients: %d connected, %d errors; distinct tick events per client min %d, max %d"
                     " (%d ticks)\n" % (len(received), len(errors), min(per_client, default=0),
                                        max(per_client, default=0), args.ticks))
    if lat:
        s = _stats(lat)
        sys.stdout.write("  delivery after the tick's end: p50 %.0f ms, p99 %.0f ms (poll period 500 ms)\n"
                         % (s["p50_ms"], s["p99_ms"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
