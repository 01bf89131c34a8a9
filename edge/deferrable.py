"""Deferrable energy jobs of one day and the energy delivered to each (lab feed ``/deferables``).

A job asks for ``energy`` joules within ticks ``start <= t < end`` of the day (DESIGN.md §2).
The lab feed's ``end`` is the job's deadline tick, inclusive; :func:`picogrid.edge.labfeed.parse`
turns it into this exclusive end once, at the client. The energy the deferrable load takes goes to the open jobs earliest deadline
first (EDF: optimal for meeting deadlines with one server, Liu & Layland, J. ACM 20(1), 1973),
so one ledger serves the optimiser's inputs, the simulated plant and the bench's metering.
"""

from __future__ import annotations

import numpy as np


def as_job_array(jobs):
    """Jobs as an array [J, 3] of ``(start, end, energy_j)``, order kept.

    Accepts dicts ``{"start", "end", "energy"}`` (lab feed), dicts ``{"start_tick",
    "end_tick", "energy_j"}`` (:func:`picogrid.edge.labfeed.parse`) or triples.

    Raises
    ------
    ValueError
        On a negative energy, a window with ``end < start`` or a negative start.
    """
    rows = []
    for j in () if jobs is None else jobs:
        if isinstance(j, dict):
            j = (j["start"], j["end"], j["energy"]) if "start" in j else (
                j["start_tick"], j["end_tick"], j["energy_j"])
        rows.append([float(v) for v in j])
    arr = np.array(rows, dtype=float).reshape(-1, 3)
    bad = (arr[:, 0] < 0) | (arr[:, 1] < arr[:, 0]) | ~(arr[:, 2] >= 0)
    if bad.any():
        raise ValueError(f"bad deferrable job(s) {arr[bad].tolist()}: need 0 <= start <= end, energy >= 0")
    return arr


class JobLedger:
    """The day's jobs and the energy delivered to each [J].

    Parameters
    ----------
    jobs : sequence, see :func:`as_job_array`; ticks of the day
    delivered_j : array [J] or None, energy already delivered to each [J] (default none)

    Attributes
    ----------
    jobs : ndarray [J, 3]  ``(start, end, energy_j)``
    delivered_j : ndarray [J]  energy delivered to each job so far [J]
    """

    def __init__(self, jobs=(), delivered_j=None):
        self.jobs = as_job_array(jobs)
        self.delivered_j = (np.zeros(len(self.jobs)) if delivered_j is None
                            else np.array(delivered_j, dtype=float).reshape(len(self.jobs)))

    def __len__(self):
        return len(self.jobs)

    def replace(self, jobs):
        """Take a new job list (the feed came back, a new day): a job already in the ledger
        (same window and energy) keeps what it was delivered, the others start at zero."""
        new = JobLedger(jobs)
        for k, job in enumerate(new.jobs):
            same = np.flatnonzero((self.jobs == job).all(axis=1)) if len(self.jobs) else []
            if len(same):
                new.delivered_j[k] = self.delivered_j[same[0]]
        self.jobs, self.delivered_j = new.jobs, new.delivered_j

    def live(self, t, limit=None):
        """Jobs still open at tick ``t`` with energy left, relative to ``t`` (lab feed format).

        ``limit``: at most this many, earliest deadline first (the optimiser's job slots); the
        jobs left out are still in the ledger and get energy once the earlier ones are done.
        """
        out = [{"start": start - t, "end": end - t, "energy": energy - done}
               for (start, end, energy), done in zip(self.jobs, self.delivered_j)
               if end > t and energy - done > 0]
        if limit is not None and len(out) > limit:
            out = sorted(out, key=lambda j: j["end"])[:limit]
        return out

    def need_w(self, t, dt_s):
        """Power that would finish every open job within tick ``t`` [W], shape [J]."""
        open_ = (self.jobs[:, 0] <= t) & (self.jobs[:, 1] > t)
        return np.where(open_, self.jobs[:, 2] - self.delivered_j, 0.0).clip(0.0) / dt_s

    def deliver(self, t, energy_j, dt_s):
        """Credit ``energy_j`` taken by the deferrable load in tick ``t`` to the open jobs,
        earliest deadline first; returns the energy credited [J] (the rest was not asked for)."""
        left = max(float(energy_j), 0.0)
        need_j = self.need_w(t, dt_s) * dt_s
        for j in np.argsort(self.jobs[:, 1], kind="stable"):
            take = min(need_j[j], left)
            self.delivered_j[j] += take
            left -= take
        return max(float(energy_j), 0.0) - left

    def shortfall_j(self):
        """Energy of every job not delivered [J] (its window's end is not checked: call it
        at the day's end, when every window has closed)."""
        return float(np.maximum(self.jobs[:, 2] - self.delivered_j, 0.0).sum()) if len(self) else 0.0


class DeferrableLoad:
    """The board that delivers the day's jobs on top of its own demand (the edge runner's view).

    Parameters
    ----------
    board : str  name of the load board of the ``deferrable`` priority class
    rating_w : float  its power limit [W]
    load_index : int  its column in the demand arrays [L]

    Attributes
    ----------
    ledger : JobLedger  the day's jobs and the metered energy delivered to each
    """

    def __init__(self, board, rating_w, load_index):
        self.board, self.rating_w, self.load_index = board, float(rating_w), int(load_index)
        self.ledger = JobLedger()
        self._heard = None
        # (tick, J) sent to jobs in the last tick: metered only after the next tick's setpoints
        # go out, so planning counts it as delivered until the meters say how much it was
        self._pending = None

    def update(self, day, jobs):
        """Take the source's jobs of ``day`` when they change (a new day, the feed came back);
        returns True when they did."""
        heard = (day, list(jobs))
        if heard == self._heard:
            return False
        if self._heard is not None and day != self._heard[0]:
            self.ledger = JobLedger()          # a new day: the same windows are new jobs
        self.ledger.replace(jobs)
        self._heard = heard
        return True

    def planning(self):
        """The ledger with the last tick's job energy counted as delivered (see ``_pending``)."""
        if self._pending is None:
            return self.ledger
        ledger = JobLedger(self.ledger.jobs, self.ledger.delivered_j)
        ledger.deliver(*self._pending)
        return ledger

    def headroom_w(self, demand_w):
        """Power the board can add for jobs on top of its demand [W]; ``demand_w`` [..., L]."""
        return np.maximum(self.rating_w - np.asarray(demand_w, float)[..., self.load_index], 0.0)

    def sent(self, t, p_w, dt_s):
        """The setpoint of tick ``t`` asked for ``p_w`` [W] of job power."""
        self._pending = (t, max(float(p_w), 0.0) * dt_s, dt_s)

    def meter(self, t, board_energy_j, demand_w, dt_s):
        """Credit what the board took in tick ``t`` beyond its own demand to the open jobs.

        ``board_energy_j``: its bus-side energy over the tick [J] (negative: a load);
        ``demand_w``: the loads' demand in that tick [L]. Returns the job power [W].
        """
        extra_j = -float(board_energy_j) - float(demand_w[self.load_index]) * dt_s
        return self.ledger.deliver(t, extra_j, dt_s) / dt_s
