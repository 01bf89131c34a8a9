"""Deferrable energy jobs of one day and the energy delivered to each (lab feed ``/deferables``).

A job asks for ``energy`` joules within ticks ``start <= t < end`` of the day (docs/design.md §2).
The lab feed's ``end`` is the job's deadline tick, inclusive; :func:`picogrid.edge.sources.labfeed.parse`
turns it into this exclusive end once, at the client. The energy the deferrable load takes goes to the open jobs earliest deadline
first (EDF: optimal for meeting deadlines with one server, Liu & Layland, J. ACM 20(1), 1973),
so one ledger serves the optimiser's inputs, the simulated plant and the bench's metering.
A feed's odd windows (a start after its deadline or past the day, energy the board cannot take
in time) are normalised or refused by :func:`normalise_jobs`, each with one sentence saying so.
"""

from __future__ import annotations

import math

import numpy as np


def as_job_array(jobs):
    """Jobs as an array [J, 3] of ``(start, end, energy_j)``, order kept.

    Accepts dicts ``{"start", "end", "energy"}`` (lab feed), dicts ``{"start_tick",
    "end_tick", "energy_j"}`` (:func:`picogrid.edge.sources.labfeed.parse`) or triples.

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


def _job_triple(j):
    """``(start, end, energy)`` of a job dict (either key set) or triple, as floats."""
    if isinstance(j, dict):
        j = (j["start"], j["end"], j["energy"]) if "start" in j else (j["start_tick"], j["end_tick"], j["energy_j"])
    return tuple(float(v) for v in j)


def _stated(start, end, energy_j):
    """A job as the feed states it: ticks ``start..deadline`` (inclusive) and its energy."""
    fmt = lambda v: "%g" % v     # noqa: E731
    return "job (ticks %s..%s, %s J)" % (fmt(start), fmt(end - 1), fmt(energy_j))


def normalise_jobs(jobs, n_ticks, rating_w=None, dt_s=None):
    """Deferrable jobs as the edge can deliver them, and what was done to each odd one.

    A teaching server's ``/deferables`` can state windows no tick can serve (docs/design.md §2).
    Each job (window ``start <= t < end``, the exclusive end of
    :func:`picogrid.edge.sources.labfeed.parse`) goes through these rules, in order:

    1. energy not a finite number ``>= 0`` [J], or a tick not finite: **refused** (there is no
       amount to deliver);
    2. ticks that are not whole: rounded **inward** (start up, deadline down), so delivery stays
       inside what was stated;
    3. start after the deadline: **swapped**, the window between the two stated ticks. Refusing
       would make the job's energy a certain shortfall; two ticks in the wrong order are most
       simply the two fields swapped, and the span between them is the only window that keeps
       both stated ticks as its bounds (a feed that meant it literally gets energy it cannot
       count);
    4. start past the day's last tick ``n_ticks - 1``: **refused** (no tick of this day can serve
       it; the next day's ``/deferables`` state that day's jobs); a deadline before tick 0: refused;
    5. start before tick 0: moved to tick 0; deadline past the day's last tick: **clipped** to it
       (the day ends there, and ``/deferables`` are per day);
    6. with ``rating_w``: energy above what the deferrable board can take in the window at its
       rating, after the jobs due earlier, is **capped** to that amount, and a job that no
       room is left for is refused. The room is an earliest-deadline-first schedule of all the
       jobs at ``rating_w`` per tick, which meets every deadline whenever any schedule can
       (Liu & Layland, J. ACM 20(1), 1973; Dertouzos, IFIP Congress 1974), so a set of jobs that
       fits is never cut. The board's own demand is not subtracted here: it is forecast, not
       known, and the optimiser plans job power within the headroom left beside it.

    Parameters
    ----------
    jobs : sequence
        ``{"start", "end", "energy"}`` or ``{"start_tick", "end_tick", "energy_j"}`` dicts, or
        triples: ticks of the day (end exclusive), energy [J].
    n_ticks : int
        Ticks of the day.
    rating_w : float, optional
        The deferrable board's power limit [W]; None: rule 6 is not applied.
    dt_s : float, optional
        Tick length [s]; needed with ``rating_w``.

    Returns
    -------
    (list of dict, list of str)
        The jobs kept, ``{"start", "end", "energy"}`` (ints, ints, J) in the order given; and
        one sentence per job changed or refused, naming the job as stated and what was done.

    Raises
    ------
    ValueError
        ``rating_w`` without a positive ``dt_s``; a job that is not a ``start, end, energy``
        triple of numbers.
    """
    if rating_w is not None and not (dt_s and dt_s > 0):
        raise ValueError(f"normalising at a rating needs the tick length dt_s > 0, got {dt_s!r}")
    last = n_ticks - 1
    kept, notes = [], []
    for i, job in enumerate(() if jobs is None else jobs):
        try:
            start, end, energy_j = _job_triple(job)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"deferrable job must be start, end, energy numbers, got {job!r}") from exc
        name = _stated(start, end, energy_j)
        if not (math.isfinite(energy_j) and energy_j >= 0 and math.isfinite(start) and math.isfinite(end)):
            notes.append((i, f"refused {name}: its energy must be a finite number of joules >= 0 and its ticks finite"))
            continue
        done = []
        if not (start.is_integer() and end.is_integer()):
            start, end = float(math.ceil(start)), float(math.floor(end))
            done.append("ticks rounded inward to whole ticks")
        if end <= start:       # the stated deadline (end - 1) lies before the start
            start, end = end - 1, start + 1
            done.append("start after its deadline: the two swapped")
        if start > last:
            notes.append((i, f"refused {name}: it starts after the day's last tick {last}"))
            continue
        if end <= 0:
            notes.append((i, f"refused {name}: its deadline is before the day's first tick"))
            continue
        if start < 0:
            start = 0.0
            done.append("start before the day moved to tick 0")
        if end > n_ticks:
            end = float(n_ticks)
            done.append(f"deadline past the day's last tick clipped to tick {last}")
        kept.append({"start": int(start), "end": int(end), "energy": energy_j, "_i": i, "_name": name, "_done": done})
    room = _edf_room_j(kept, n_ticks, float(rating_w) * float(dt_s)) if rating_w is not None else None
    out = []
    for k, job in enumerate(kept):
        i, name, done = job.pop("_i"), job.pop("_name"), job.pop("_done")
        if room is not None and job["energy"] > room[k] * (1 + 1e-9) + 1e-12:
            if room[k] <= 0:
                notes.append((i, f"refused {name}: no room left for it at the deferrable board's {rating_w:g} W "
                                 "rating once the jobs due before it are served"))
                continue
            done.append("energy capped to %.4g J, what the deferrable board takes at its %g W rating in "
                        "ticks %d..%d once the jobs due before it are served" % (
                            room[k], rating_w, job["start"], job["end"] - 1))
            job["energy"] = room[k]
        if done:
            notes.append((i, f"normalised {name}: " + "; ".join(done)))
        out.append(job)
    return out, [text for _, text in sorted(notes, key=lambda n: n[0])]


def fit_jobs(jobs, room_w, dt_s):
    """Jobs of a plan (``{"start", "end", "energy"}``, steps of the horizon) with each energy
    capped to what an earliest-deadline-first schedule of them gets within ``room_w`` [W] at
    each step (``dt_s`` [s] long): the most of each that the room can deliver, every job whole
    when they fit together (see :func:`normalise_jobs`, rule 6). Copies; order kept."""
    room_w = np.maximum(np.asarray(room_w, float), 0.0)
    out = [dict(j) for j in jobs]
    for job, fits_j in zip(out, _edf_room_j(out, room_w.size, room_w * float(dt_s))):
        if job["energy"] > fits_j * (1 + 1e-6) + 1e-9:
            job["energy"] = fits_j
    return out


def _edf_room_j(jobs, n_ticks, per_tick_j):
    """Energy [J] an earliest-deadline-first schedule gives each job (their order), at most
    ``per_tick_j`` [J] (a number, or one per tick [n_ticks]) in each of ticks ``0..n_ticks-1``,
    no job more than it asks."""
    per_tick_j = np.broadcast_to(np.asarray(per_tick_j, float), (n_ticks,))
    left = [j["energy"] for j in jobs]
    got = [0.0] * len(jobs)
    order = sorted(range(len(jobs)), key=lambda i: jobs[i]["end"])
    for t in range(n_ticks):
        cap = per_tick_j[t]
        for i in order:
            if cap <= 0:
                break
            if jobs[i]["start"] <= t < jobs[i]["end"] and left[i] > 0:
                take = min(left[i], cap)
                got[i] += take
                left[i] -= take
                cap -= take
    return got

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
        self._notes = []         # what the normalisation did to the day's jobs, not told yet
        self._told = set()       # ... and told already (a sentence names its job): once a day
        self._capped = set()     # jobs plan_jobs has capped today (said once)

    def update(self, day, jobs, n_ticks, dt_s, notes=()):
        """Take the source's jobs of ``day`` when they change (a new day, the feed came back),
        normalised for this board (:func:`normalise_jobs` at :attr:`rating_w`); returns True
        when they changed.

        Parameters
        ----------
        day : int or None
            The source's day (a new one starts a new ledger).
        jobs : sequence
            The day's jobs (:func:`as_job_array` formats), ticks of the day, end exclusive.
        n_ticks : int
            Ticks of the day.
        dt_s : float
            Tick length [s].
        notes : sequence of str
            What the source already did to the jobs as the feed stated them (told with this
            board's own notes, see :meth:`untold`).
        """
        heard = (day, [dict(j) if isinstance(j, dict) else tuple(j) for j in jobs], tuple(notes))
        if heard == self._heard:
            return False
        if self._heard is not None and day != self._heard[0]:
            self.ledger = JobLedger()          # a new day: the same windows are new jobs
            self._told, self._capped, self._notes = set(), set(), []
        kept, own = normalise_jobs(jobs, n_ticks, self.rating_w, dt_s)
        self.ledger.replace(kept)
        self._notes += [n for n in (*notes, *own) if n not in self._told and n not in self._notes]
        self._heard = heard
        return True

    def untold(self):
        """The normalisation's sentences not told yet today (each job's once a day); they
        count as told once returned."""
        out, self._notes = self._notes, []
        self._told.update(out)
        return out

    def planning(self):
        """The ledger with the last tick's job energy counted as delivered (see ``_pending``)."""
        if self._pending is None:
            return self.ledger
        ledger = JobLedger(self.ledger.jobs, self.ledger.delivered_j)
        ledger.deliver(*self._pending)
        return ledger

    def plan_jobs(self, t, limit, room_w, dt_s):
        """The jobs for the optimiser's plan of tick ``t``, each asking no more than fits.

        :meth:`JobLedger.live` of :meth:`planning` (relative to ``t``, at most ``limit``,
        earliest deadline first), with each job's energy left capped to what an
        earliest-deadline-first schedule of them gets within ``room_w``: the power the board
        has beside its own demand at each step [W], i.e. :meth:`headroom_w` of the demand the
        plan is made for. A job the board's own demand leaves too little room for then asks
        for what it can still get, instead of the plan violating its soft energy constraint
        on every tick of the day; that is said once per job and day (:meth:`untold`). The
        ledger keeps the job's whole energy: a later tick's forecast with more room plans more.

        Parameters
        ----------
        t : int
            Tick of the plan's first step.
        limit : int
            Job slots of the optimiser.
        room_w : array [N]
            Power the board can give jobs at each step of the horizon [W].
        dt_s : float
            Step length [s].

        Returns
        -------
        list of dict
            ``{"start", "end", "energy"}``: steps relative to ``t``, energy [J].
        """
        jobs = self.planning().live(t, limit)
        fitted = fit_jobs(jobs, room_w, dt_s)
        for job, fit in zip(jobs, fitted):
            window = (t + job["start"], t + job["end"])
            if fit["energy"] < job["energy"] and window not in self._capped:   # once per job and day
                self._capped.add(window)
                self._notes.append(
                    "planned %s for %.4g J: the %s board's own demand, as forecast at tick %d, leaves it "
                    "no more room before its deadline" % (
                        _stated(*window, job["energy"]).replace(" J)", " J left)"), fit["energy"], self.board, t))
        return fitted

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
