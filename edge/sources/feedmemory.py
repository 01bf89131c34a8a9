"""What the edge has learnt from the lab market feed, kept across runs in a JSON file.

The feed's API (docs/design.md §2) gives only the day before (``/yesterday``: demand and prices, no
sun), so an edge that restarts would start over: one day for the online learner
(:class:`picogrid.edge.sources.labfeed.OnlineDayLearner`), no sun for the PV forecast, and no band
before three more days (:attr:`~picogrid.edge.sources.labfeed.OnlineDayLearner.BAND_MIN_DAYS`). A lab
day lasts five minutes, and ``picogrid demo --feed`` or ``picogrid edge --feed`` run one day
each: with this file each run takes up the days the runs before it saw.

The file holds, per lab day index, the feed's demand and prices as the learner took them (and
those of the day just run, as the feed said them live: a restart misses the next day's start, so
the next run's ``/yesterday`` is the day after it), the sun the edge observed (NaN where the
feed gave none), the last ``max_days`` of each, and the feed's URL: another feed's file is not
used. It is written whole
to a temporary file, flushed, and renamed over the old one (:func:`os.replace`), so a crash
leaves the previous version; a file that cannot be read is set aside as ``<name>.bad`` with a
warning, and the edge starts afresh instead of stopping.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from picogrid.edge.sources.labfeed import LEARNED, TICKS_PER_DAY, OnlineDayLearner

log = logging.getLogger(__name__)

KIND = "picogrid_labfeed_memory"
VERSION = 1


def _values(a):
    """A day's array as JSON numbers, NaN (a tick not observed) as null."""
    return [None if not np.isfinite(v) else float(v) for v in np.asarray(a, float)]


def _array(values, lo=-np.inf, hi=np.inf):
    """A stored day back as an array [n_ticks] (null -> NaN); ValueError on anything else."""
    if not isinstance(values, list) or len(values) != TICKS_PER_DAY or not all(
            v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and lo <= v <= hi)
            for v in values):
        raise ValueError(f"a day needs {TICKS_PER_DAY} numbers in [{lo}, {hi}] or nulls")
    return np.array([np.nan if v is None else v for v in values], float)


class FeedMemory:
    """The lab-feed days an edge has seen, in the JSON file ``path``.

    Parameters
    ----------
    path : str or Path
        The file (its folder is created on the first save).
    max_days : int
        Days kept of each kind, and how far back from the current day a restored day may lie
        (the learner's own window, 28 by default).
    """

    def __init__(self, path, max_days=28):
        self.path = Path(path)
        self.max_days = int(max_days)

    def _set_aside(self, why):
        bad = self.path.with_name(self.path.name + ".bad")
        try:
            os.replace(self.path, bad)
            log.warning("feed memory %s unreadable (%s): set aside as %s, starting afresh", self.path, why, bad)
        except OSError as exc:
            log.warning("feed memory %s unreadable (%s) and not set aside (%s): starting afresh",
                        self.path, why, exc)

    def load(self, feed_url=None):
        """``(feed_days, sun_days)``: lab day -> {series: [n_ticks]} as the learner takes them
        (``demand_w``, ``sell_price``, ``buy_price``), and lab day -> sun fraction [n_ticks] (NaN
        where not seen), both in day order. Empty without a file, with one that cannot be read
        (set aside as ``.bad``) or with one of another feed than ``feed_url`` (left for that
        feed until this one's first save replaces it)."""
        if not self.path.exists():
            return {}, {}
        try:
            d = json.loads(self.path.read_text())
            if not isinstance(d, dict) or d.get("kind") != KIND or d.get("version") != VERSION:
                raise ValueError(f"not a version-{VERSION} {KIND} file")
            feed = {int(day): {("demand_w" if k == "demand" else k): _array(v[k]) for k in LEARNED}
                    for day, v in d["feed_days"].items()}
            sun = {int(day): _array(v, 0.0, 1.0) for day, v in d["sun_days"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            self._set_aside(exc)
            return {}, {}
        if feed_url is not None and d.get("feed") != feed_url:
            log.warning("feed memory %s is of the feed %s, not %s: not used", self.path, d.get("feed"), feed_url)
            return {}, {}
        return dict(sorted(feed.items())), dict(sorted(sun.items()))

    def save(self, learner, sun_days, feed_days=None, feed_url=None):
        """Write the learner's days (:class:`~picogrid.edge.sources.labfeed.OnlineDayLearner`), more feed
        days ``{lab day: {series: [n_ticks]}}`` the edge saw itself (``demand``, ``sell_price``,
        ``buy_price``: a day the next run's ``/yesterday`` will not cover when it starts a day
        later) and the sun days ``{lab day: [n_ticks]}``, the last ``max_days`` of each, as the
        memory of the feed at ``feed_url``. Raises OSError when the file cannot be written."""
        feed = {day: {k: learner.data[k][i] for k in LEARNED} for i, day in enumerate(learner.days)}
        feed.update(feed_days or {})
        feed = {str(day): {k: _values(v[k]) for k in LEARNED} for day, v in sorted(feed.items())}
        sun = {str(day): _values(a) for day, a in sorted(sun_days.items()) if np.isfinite(a).any()}
        doc = {"kind": KIND, "version": VERSION, "feed": feed_url,
               "feed_days": dict(list(feed.items())[-self.max_days:]),
               "sun_days": dict(list(sun.items())[-self.max_days:])}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # a file of its own per writer, flushed to disk before it replaces the old one
        with tempfile.NamedTemporaryFile("w", dir=self.path.parent, prefix=self.path.name + ".",
                                         suffix=".tmp", delete=False) as f:
            f.write(json.dumps(doc))
            f.flush()
            os.fsync(f.fileno())
        os.replace(f.name, self.path)

    def restore(self, learner, day, feed_url=None):
        """The remembered days of the ``max_days`` before lab day ``day`` (the current one):
        ``(learner, sun_days)``, a learner that has learnt them and the days ``learner`` already
        had, all in day order (a day it refuses is logged and skipped), and the sun days.

        Days outside that window (another clock speed, a file far older than the learner's
        window) are left out, and said so in the log.
        """
        feed, sun = self.load(feed_url)
        window = range(int(day) - self.max_days, int(day))
        days = {d: {("demand_w" if k == "demand" else k): learner.data[k][i] for k in LEARNED}
                for i, d in enumerate(learner.days)}
        days.update({d: v for d, v in feed.items() if d in window and d not in days})
        left = sorted(d for d in set(feed) | set(sun) if d not in window)
        if left:
            log.info("feed memory: %d days outside lab days %d..%d left out", len(left), window[0], window[-1])
        out = OnlineDayLearner(learner.n_ticks, learner.max_days)
        for d in sorted(days):
            try:
                out.observe_day(d, days[d])
            except ValueError as exc:
                log.warning("feed memory day %d not learnt: %s", d, exc)
        return out, {d: a for d, a in sun.items() if d in window}
