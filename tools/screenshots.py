"""A PNG of every dashboard page, taken by Debian's chromium driven by Playwright.

``picogrid screenshots`` (``make screenshots``) runs a short real day on the HIL bench (or
uses ``--db`` of an earlier run), serves the dashboard over its store on loopback, and saves
``<out>/<page>.png`` at a projector's 1600 x 1000 px.

The browser is the system's chromium (``apt-get install chromium``), never a download:
:func:`launch` starts it with the flags this lab's closed network needs.
"""

import argparse
import logging
import os
import pathlib
import shutil
import sys
import tempfile

log = logging.getLogger(__name__)

CHROMIUM = os.environ.get("PICOGRID_CHROMIUM", "/usr/bin/chromium")
# No GPU, no sandbox (root in CI), and no background connections: the network is closed.
CHROMIUM_ARGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync")
PAGES = (("live", "/"), ("consumption", "/consumption"), ("finance", "/finance"),
         ("forecasts", "/forecasts"), ("boards", "/boards"))
VIEWPORT = {"width": 1600, "height": 1000}


def browser_missing():
    """Why a browser cannot be started here (str), or None when Playwright and chromium are present."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the Python package 'playwright' is not installed (pip install playwright)"
    if not os.access(CHROMIUM, os.X_OK):
        return "no chromium at %s (Debian: apt-get install -y chromium)" % CHROMIUM
    return None


class Browser:
    """A headless chromium with a fresh profile; a context manager.

    Attributes
    ----------
    browser : playwright.sync_api.Browser

    Raises
    ------
    RuntimeError
        When Playwright or chromium is missing (the message says which and how to install).
    """

    def __init__(self):
        reason = browser_missing()
        if reason:
            raise RuntimeError(reason)
        self._profile = None
        self._pw = None
        self.browser = None

    def __enter__(self):
        from playwright.sync_api import sync_playwright
        self._profile = tempfile.mkdtemp(prefix="picogrid-chromium-")
        self._pw = sync_playwright().start()
        try:
            # A persistent context is how Playwright takes --user-data-dir: a fresh, empty one.
            self.context = self._pw.chromium.launch_persistent_context(
                self._profile, executable_path=CHROMIUM, headless=True, args=list(CHROMIUM_ARGS),
                viewport=VIEWPORT)
        except BaseException:
            self._pw.stop()
            shutil.rmtree(self._profile, ignore_errors=True)
            raise
        return self

    def new_page(self):
        """A new tab that records console errors in ``page.errors`` (list of str)."""
        page = self.context.new_page()
        page.set_default_timeout(20000)    # [ms]: a stuck page fails a test, never hangs it
        page.errors = []
        page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: page.errors.append(str(e)))
        return page

    def __exit__(self, *exc):
        try:
            self.context.close()
        finally:
            self._pw.stop()
            shutil.rmtree(self._profile, ignore_errors=True)


def wait_for_charts(page, n_charts):
    """Wait until the page has drawn ``n_charts`` uPlot canvases (its data arrived)."""
    page.wait_for_function("n => document.querySelectorAll('.uplot canvas').length >= n",
                           arg=n_charts, timeout=15000)


N_CHARTS = {"live": 1, "consumption": 4, "finance": 3, "forecasts": 2, "boards": 0}


def take(url, out_dir):
    """Save a full-page PNG of every page of the dashboard at ``url`` into ``out_dir``.

    Returns
    -------
    list of pathlib.Path
        The files written, in ``PAGES`` order.
    """
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with Browser() as b:
        for name, path in PAGES:
            page = b.new_page()
            page.goto(url.rstrip("/") + path)
            wait_for_charts(page, N_CHARTS[name])
            page.wait_for_timeout(300)    # let the first SSE update settle
            target = out_dir / ("%s.png" % name)
            page.screenshot(path=str(target), full_page=True)
            if page.errors:
                log.warning("%s: browser console errors: %s", name, page.errors)
            page.close()
            written.append(target)
            log.info("wrote %s", target)
    return written


def _run_day(run_dir, ticks, tick_s):
    """A short real day on the HIL bench, with the demo's three benches; returns the store's path."""
    from picogrid.hil.day import Day, load_site
    site = load_site(tick_s=tick_s, n_ticks=ticks, horizon=ticks)
    with Day(site, run_dir, perfect_bench=True) as day:
        day.run()
    return day.db_path


def main(argv=None):
    parser = argparse.ArgumentParser(prog="picogrid screenshots", description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", help="an existing store (default: run a short day on the HIL bench)")
    parser.add_argument("--out", default="var/screenshots", help="folder for the PNG files")
    parser.add_argument("--ticks", type=int, default=16, help="ticks of the short day")
    parser.add_argument("--tick-s", type=float, default=1.5, help="tick length of the short day [s]")
    args = parser.parse_args(argv)
    reason = browser_missing()
    if reason:
        sys.stderr.write("cannot take screenshots: %s\n" % reason)
        return 2
    from picogrid.web.server import start_background
    with tempfile.TemporaryDirectory(prefix="picogrid-shots-") as tmp:
        db = args.db
        if db is None:
            sys.stdout.write("running a %d-tick day on the HIL bench ...\n" % args.ticks)
            sys.stdout.flush()
            db = _run_day(tmp, args.ticks, args.tick_s)
        url, stop = start_background(db)
        try:
            for path in take(url, args.out):
                sys.stdout.write("%s\n" % path)
        finally:
            stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
