"""Resume a run from its SQLite store after the edge process died (``picogrid edge --resume``).

A controller can be killed at any instant (``kill -9``, a power cut of the Pi). The boards
keep their last setpoints until their watchdog puts them in failsafe, and the day goes on
without the edge. On restart the edge looks in its store for the run it left ``running``
whose day has not ended, and carries on with it from the wall clock's tick: same run id,
same tick 0, nothing written twice. What the run had learned is read back from what it
recorded, each tick as it was committed (the store commits once per tick, so a kill loses
at most the tick under way):

* the measured dispatch rows give the source's observations of the day so far (sun,
  demand, prices: :meth:`picogrid.edge.sources.feedsource.FeedSource.restore`) and the
  deferrable jobs' delivered energy;
* the decision rows give the solver statuses and times of the summary and the stored energy
  the day started from (``details_json`` ``storage_energy_j``).

The ticks nobody decided while the edge was down stay without a decision row: that is what
they were, and ``picogrid soak`` counts them.
"""

import json
import logging
import math
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass
class ResumePoint:
    """A run left ``running`` that can go on.

    Attributes
    ----------
    run_id : int
    t0 : float, unix time [s] of the run's tick 0
    n_ticks : int
    tick_s : float [s]
    next_tick : int, the first tick not decided yet (the last decided one + 1)
    dispatch : list of dict, the run's measured dispatch rows of policy ``mpc``, by tick
    decisions : list of dict, its decision rows (tick, status, solve_time_s, details), by tick
    """
    run_id: int
    t0: float
    n_ticks: int
    tick_s: float
    next_tick: int
    dispatch: list = field(default_factory=list)
    decisions: list = field(default_factory=list)

    @property
    def start_energy_j(self):
        """Stored energy the day's first plan started from [J], or None (not recorded)."""
        for d in self.decisions:
            e = d["details"].get("storage_energy_j")
            if e is not None and math.isfinite(e):
                return float(e)
        return None


def find_resumable(conn, profile, now_s):
    """The last run of ``profile`` left ``running`` whose day is still under way at ``now_s``.

    Parameters
    ----------
    conn : sqlite3.Connection of the store (rows as :class:`sqlite3.Row`)
    profile : str, the site's profile (a run of another site is not resumed)
    now_s : float, unix time [s]

    Returns
    -------
    ResumePoint or None: None when there is no such run, the run recorded no ``t0`` (older
    stores) or its last tick's time has passed (then it is marked ``failed``: it will never
    finish).
    """
    row = conn.execute("SELECT id, n_ticks, tick_s, config_json FROM run WHERE status='running' AND profile=?"
                       " ORDER BY id DESC LIMIT 1", (profile,)).fetchone()
    if row is None:
        return None
    run_id, n_ticks, tick_s = int(row[0]), int(row[1]), float(row[2])
    t0 = json.loads(row[3] or "{}").get("t0")
    if t0 is None:
        return None
    if now_s >= float(t0) + n_ticks * tick_s:
        log.warning("run %d ended while the edge was down: marked failed, a new run starts", run_id)
        conn.execute("UPDATE run SET status='failed' WHERE id=?", (run_id,))
        conn.commit()
        return None
    decisions = [{"tick": int(t), "status": s, "solve_time_s": st, "details": json.loads(d or "{}")}
                 for t, s, st, d in conn.execute(
                     "SELECT tick, status, solve_time_s, details_json FROM decision WHERE run_id=? ORDER BY tick",
                     (run_id,))]
    cols = [c[1] for c in conn.execute("PRAGMA table_info(dispatch)")]
    dispatch = [dict(zip(cols, r)) for r in conn.execute(
        "SELECT * FROM dispatch WHERE run_id=? AND policy='mpc' ORDER BY tick", (run_id,))]
    next_tick = decisions[-1]["tick"] + 1 if decisions else 0
    return ResumePoint(run_id, float(t0), n_ticks, tick_s, next_tick, dispatch, decisions)
