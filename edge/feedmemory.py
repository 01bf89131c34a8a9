"""What the edge has learnt from the lab market feed, kept across runs in a JSON file.

The feed's API (DESIGN.md §2) gives only the day before (``/yesterday``: demand and prices, no
sun), so an edge that restarts would start over: one day for the online learner
(:class:`picogrid.edge.labfeed.OnlineDayLearner`), no sun for the PV forecast, and no band
before three more days (:attr:`~picogrid.edge.labfeed.OnlineDayLearner.BAND_MIN_DAYS`). A lab
day lasts five minutes, and ``picogrid demo --feed`` or ``picogrid edge --feed`` run one day
each: with this file each run takes up the days the runs before it saw.

The file holds, per lab day index, the feed's demand and prices as the learner took them (and
those of the day just run, as the feed said them live: a restart misses the next day's start, so
the next run's ``/yesterday`` is the day after it) and the sun the edge observed (the last
``max_days`` of each). It is written whole to a temporary file
and renamed over the old one (:func:`os.replace`), so a crash leaves the previous version; a
file that cannot be read is set aside as ``<name>.bad`` with a warning, and the edge starts
afresh instead of stopping.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from picogrid.edge.labfeed import LEARNED, TICKS_PER_DAY

log = logging.getLogger(__name__)

KIND = "picogrid_labfeed_memory"
VERSION = 1


def _values(a):
    """A day's array as JSON numbers, NaN (a tick not observed) as null."""
    return [None if not np.isfinite(v) else float(v) for v in np.asarray(a, float)]


def _array(values):
    a = np.array([np.nan if v is None else v for v in values], float)
    if a.shape != (TICKS_PER_DAY,):
        raise ValueError(f"a day needs {TICKS_PER_DAY} values, got {a.shape}")
    return a


class FeedMemory:
    """The lab-feed days an edge has seen, in the JSON file ``path``.

    Parameters
    ----------
    path : str or Path
        The file (its folder is created on the first save).
    max_days : int
        Days kept of each kind (the learner's own window, 28 by default).
    """

    def __init__(self, path, max_days=28):
        self.path = Path(path)
        self.max_days = int(max_days)

    def load(self):
        """``(feed_days, sun_days)``: lab day -> {series: [n_ticks]} as the learner takes them
        (``demand_w``, ``sell_price``, ``buy_price``), and lab day -> sun fraction [n_ticks],
        both in day order; empty without a file or with one that cannot be read (set aside)."""
        if not self.path.exists():
            return {}, {}
        try:
            d = json.loads(self.path.read_text())
            if d.get("kind") != KIND or d.get("version") != VERSION:
                raise ValueError(f"not a version-{VERSION} {KIND} file")
            feed = {int(day): {("demand_w" if k == "demand" else k): _array(v[k]) for k in LEARNED}
                    for day, v in d["feed_days"].items()}
            sun = {int(day): _array(v) for day, v in d["sun_days"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            bad = self.path.with_name(self.path.name + ".bad")
            log.warning("feed memory %s unreadable (%s): set aside as %s, starting afresh", self.path, exc, bad)
            os.replace(self.path, bad)
            return {}, {}
        return dict(sorted(feed.items())), dict(sorted(sun.items()))

    def save(self, learner, sun_days, feed_days=None):
        """Write the learner's days (:class:`~picogrid.edge.labfeed.OnlineDayLearner`), more feed
        days ``{lab day: {series: [n_ticks]}}`` the edge saw itself (``demand``, ``sell_price``,
        ``buy_price``: a day the next run's ``/yesterday`` will not cover when it starts a day
        later) and the sun days ``{lab day: [n_ticks]}``, the last ``max_days`` of each."""
        feed = {day: {k: learner.data[k][i] for k in LEARNED} for i, day in enumerate(learner.days)}
        feed.update(feed_days or {})
        feed = {str(day): {k: _values(v[k]) for k in LEARNED} for day, v in sorted(feed.items())}
        sun = {str(day): _values(a) for day, a in sorted(sun_days.items())}
        doc = {"kind": KIND, "version": VERSION,
               "feed_days": dict(list(feed.items())[-self.max_days:]),
               "sun_days": dict(list(sun.items())[-self.max_days:])}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, self.path)

    def restore(self, learner, before_day):
        """Teach ``learner`` the remembered feed days before lab day ``before_day`` (in day order;
        a day it refuses is logged and skipped) and return the remembered sun days before it."""
        feed, sun = self.load()
        for day, series in feed.items():
            if day < before_day and day not in learner.days:
                try:
                    learner.observe_day(day, series)
                except ValueError as exc:
                    log.warning("feed memory day %d not learnt: %s", day, exc)
        return {day: a for day, a in sun.items() if day < before_day}
