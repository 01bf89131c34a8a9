"""The edge's tick scheduler: read -> estimate -> forecast -> optimise -> dispatch -> persist.

One :meth:`EdgeRunner.tick` per tick of the day. Each stage is a separate component with
declared inputs (after OpenEMS's controllers); a stage that fails is logged and replaced by
its safe rule (seasonal-naive forecast, rule-based dispatch) so the tick always ends with
setpoints. Time comes from the injected ``clock``/``sleep`` pair.
"""

import logging
import threading
import time

import numpy as np

from picogrid.edge.control import dispatch
from picogrid.edge.control.planners import PLANNERS
from picogrid.edge.control import estimate
from picogrid.edge.control import metering
from picogrid.edge.sources.deferrable import DeferrableLoad
from picogrid.edge.boards import plausibility
from picogrid.edge.boards.health import Health
from picogrid.edge.control.operator import Operator
from picogrid.firmware import protocol as P
from picogrid.edge.optimizer.mpc_config import config_from_site
from picogrid.edge.optimizer.optimize import MpcController
from picogrid.edge.forecasting.forecast import forecast_from_now
from picogrid.edge.forecasting.error_scenarios import forecast_errors
from picogrid.edge.optimizer import economics
from picogrid.edge.optimizer.policies import pad_day_end
from picogrid.edge.optimizer.rules import naive_step
from picogrid.edge.sources.signals import LOAD_SERIES, LOADS
from picogrid.edge.site import deferrable_board
from picogrid.edge.forecasting.scenarios import forecast_inputs, planned_point

log = logging.getLogger(__name__)

_ACK_TIMEOUT_S = 0.5
_FORECAST_SERIES = ("pv_available_w", "load1_demand_w", "load2_demand_w", "load3_demand_w",
                    "import_price_per_j")


class EdgeRunner:
    """Runs one day of ticks against a fleet of boards.

    Parameters
    ----------
    site : dict, parsed site TOML
    source : picogrid.edge.sources.signals.ScenarioSource
    fleet : picogrid.edge.boards.fleet.Fleet, with links attached
    store : picogrid.edge.control.store.Store, a run already started
    forecaster : object with ``forecast(history, calendar, clearsky) -> fc`` and a ``source``
        attribute naming where each series came from (``picogrid.edge.forecasting.forecast.Forecaster``)
    t0 : float, clock time [s] of tick 0
    policy : 'mpc' (forecast + receding-horizon QP), 'naive' (the rule-based baseline, run
        on a second bench so both are measured under the same physics) or 'mpc_perfect_forecast' (the
        MPC with perfect forecasts: the same QP, one plan, on the source's true future, measured on a bench;
        needs a source whose ``truth()`` holds the whole day, i.e. a replayed day)
    record : 'all' (telemetry, decisions, forecasts, setpoints, boards) or 'dispatch'
        (only the measured per-tick dispatch rows, for the comparison bench)
    clock, sleep : injected time functions
    stop_requested : threading.Event or None, shared by the runners of one day (None: its own)
    """

    def __init__(self, site, source, fleet, store, forecaster, t0, policy="mpc", record="all",
                 clock=time.time, sleep=time.sleep, stop_requested=None):
        if policy not in PLANNERS or record not in ("all", "dispatch"):
            raise ValueError("policy must be %s and record all|dispatch" % "|".join(PLANNERS))
        self.policy, self.record_all = policy, record == "all"
        self.planner = PLANNERS[policy](self)
        self.site = site
        self.source = source
        self.fleet = fleet
        self.store = store
        self.forecaster = forecaster
        self.t0 = t0
        self.clock, self.sleep = clock, sleep
        # set (by anyone) to end run_day before its next tick: another bench of the day failed,
        # or the operator pressed Ctrl-C; the tick under way finishes first
        self.stop_requested = threading.Event() if stop_requested is None else stop_requested
        self.cfg = config_from_site(site)
        if self.planner.one_plan:
            self.cfg = self.cfg.replace(scenario_weights=None, scenario_quantiles=None)
        self.c_storage_f, self.esr_storage_ohm = estimate.supercapacitor(site)
        self.v_storage_max_v = estimate.storage_voltage_max_v(site)
        # storage telemetry older than the boards' watchdog is no estimate: the board is in failsafe
        self.storage_max_age_s = float(site["bench"]["watchdog_ms"]) / 1000.0
        self.energy_note = None          # why there is no storage estimate this tick, if there is none
        fleet.plausibility = plausibility.Plausibility(site)    # the site's bounds on telemetry
        if store is not None:
            store.t0 = t0                                       # time base of its outage events
        self.mpc = MpcController(self.cfg) if self.planner.solves else None
        self.tick_s = float(site["bench"]["tick_s"])
        self.n_ticks = int(site["bench"]["n_ticks"])
        # the scenario energy calibration's buckets are ticks of the models' day: only for days as long
        cal = getattr(forecaster, "energy_calibration", None)
        self.energy_calibration = cal if cal is not None and cal.n_ticks == self.n_ticks else None
        self.horizon = self.cfg.horizon
        self.v_ref = float(site["bench"]["bus_voltage_v"])
        self.pv_capability_w = float(site["pv"]["capability_w"])
        self.c_bus = float(site["bench"]["bus_capacitance_f"])
        self.prev_snapshot = None       # name -> telemetry at the previous tick boundary
        self.solve_times_s = []
        self.solve_cpu_s = []
        self.statuses = []
        self.e0_j = None
        self.measured = []              # per tick: dict of measured energies and prices
        self.last_setpoints = None
        self.operator = Operator(site)
        self.health = Health(fleet.boards)
        self._health_fed = 0     # rows of the fleet's telemetry log Health has seen (since its drain)
        # deferrable jobs (lab feed /deferables) go to the board of the deferrable class
        board, rating_w = deferrable_board(site)
        self.deferrable = DeferrableLoad(board, rating_w, LOADS.index(board)) if board else None
        # error scenarios: the point forecasts issued at each tick (negative: days before the
        # run day, replayed by prepare()), for the errors they turn out to have k days later
        self.error_days = self.cfg.error_days if self.planner.error_scenarios else 0
        self._points = {}

    @property
    def start_energy_j(self):
        """Stored energy at the day's first estimate [J]; the storage's floor if there was none."""
        return self.cfg.e_min_j if self.e0_j is None else self.e0_j

    # -- stages ----------------------------------------------------------------------
    def observe(self):
        """``(snapshot, e_j, islanded)``: the fleet's snapshot (name -> board state), the
        stored energy [J] estimated from the storage board's telemetry (``None`` without a fresh,
        physical one: :attr:`energy_note` says why),
        and whether the grid is out (the grid board reports no supply or has gone quiet)."""
        snap = self.fleet.snapshot()
        e_j, self.energy_note = estimate.storage_estimate(snap["storage"], self.fleet.clock(), self.storage_max_age_s,
                                                          self.c_storage_f, self.esr_storage_ohm, self.v_storage_max_v)
        grid = snap["grid"]["telemetry"]
        # a grid board that reports no supply, or says nothing at all, means no grid
        islanded = bool(grid and grid["flags"] & P.FLAG_ISLANDED) or self.health.stale["grid"]
        return snap, e_j, islanded

    def known_now(self, k):
        """What the source tells of tick ``k`` (the feed, the meters): step 0 of the plan, in
        the ``now`` format of :func:`picogrid.edge.forecasting.scenarios.forecast_inputs`."""
        demand_now, imp_now, exp_now = self.source.now(k)
        return {"pv_avail_w": self.source.sun_now(k) * self.pv_capability_w, "demand_w": demand_now,
                "import_price_per_j": imp_now, "export_price_per_j": exp_now}

    def forecast(self, k, now):
        """``(fans, sources)`` for the plan at tick ``k``: ``{series: {quantile: array [N]}}``
        (SI units; step 0 is ``now``, step j tick ``k + j``) and series -> the source that made
        it (the forecaster's, or ``seasonal_naive:<exception>`` when it failed, logged), as the
        decision record stores it."""
        history = self.source.history(k, self._history_len())
        calendar = self.source.calendar(k)
        # the forecast starts at the next tick, from the history through now (known values)
        clearsky = self.source.clearsky(k + 1, self.horizon)
        try:
            fc = forecast_from_now(self.forecaster, history, now, LOAD_SERIES, calendar, clearsky)
            src = dict(self.forecaster.source)
        except Exception as exc:   # forecaster broken: same tick yesterday, said so
            log.exception("forecaster failed at tick %d", k)
            return self._same_tick_yesterday(k, exc)
        return fc, src

    def _history_len(self):
        """Past ticks a forecast reads: two days, or the models' own history if longer."""
        day_ticks = self.source.n_ticks
        hist_len = 2 * day_ticks
        if getattr(self.forecaster, "n_ticks", None) == day_ticks:   # its models apply: their history
            hist_len = max(hist_len, int(getattr(self.forecaster, "history_ticks", 0)))
        return hist_len

    def _same_tick_yesterday(self, k, exc):
        """The fallback fans of a failed forecast: each series' last day in every quantile,
        with sources ``seasonal_naive:<exception>``."""
        day_ticks = self.source.n_ticks
        history = self.source.history(k, day_ticks)
        fc = {s: {q: history[s][-day_ticks:][np.arange(self.horizon) % day_ticks]
                  for q in (0.1, 0.5, 0.9)} for s in _FORECAST_SERIES}
        return fc, {s: "seasonal_naive:%s" % type(exc).__name__ for s in _FORECAST_SERIES}

    def true_future(self, k):
        """``(fans, sources)`` as :meth:`forecast` returns them, from the source's true day:
        every quantile the truth of ticks ``k .. k + N - 1`` (the day's last value past its end,
        where :func:`~picogrid.edge.optimizer.policies.pad_day_end` takes over)."""
        try:
            truth = self.source.truth()
            rows = np.minimum(np.arange(k, k + self.horizon), len(truth["pv_available_w"]) - 1)
            fans = {}
            for s in _FORECAST_SERIES + (("export_price_per_j",) if "export_price_per_j" in truth else ()):
                values = np.asarray(truth[s], float)[rows]
                fans[s] = {q: values for q in (0.1, 0.5, 0.9)}
        except Exception as exc:   # a source without the whole day: plan as a failed forecast
            # would (the tick then says ``fallback:no_true_future``, see :meth:`tick`)
            log.exception("true future unavailable at tick %d", k)
            return self._same_tick_yesterday(k, exc)
        return fans, {s: "truth" for s in fans}

    def _check_reference(self, k, t_rel, decision, src):
        """The bench of the MPC with perfect forecasts is a reference only where it planned on the true future
        and solved: a tick decided otherwise (``fallback:no_true_future``, or the solver's
        fallback) leaves a ``reference_fallback`` event, which the dashboard counts (this bench
        stores no decisions)."""
        if set(src.values()) != {"truth"}:
            decision.status = "fallback:no_true_future"
            why = "true future unavailable: " + ", ".join(sorted(set(src.values())))
            decision.reason = "; ".join(filter(None, [decision.reason, why]))
        if not decision.status.startswith("solved"):
            self.store.event(t_rel, None, "reference_fallback",
                             "tick %d: %s" % (k, decision.reason or decision.status))

    def prepare(self, k=0):
        """Forecast the ticks of the ``error_days`` days before tick ``k`` as the run would
        have, in order, so the error scenarios have their past errors from tick ``k`` on (the
        forecaster's online recalibration runs through those days too). A source without that
        much history says so once, and each error scenario without its day is then a copy of
        the point forecast (:func:`~picogrid.edge.forecasting.error_scenarios.error_scenarios`), which puts
        its share of ``error_scenario_weight`` on the expected case until the runner has
        forecast that day itself (the lab feed has no history at all:
        :func:`picogrid.edge.sources.feedsource.feed_site` turns error scenarios off)."""
        t_start = time.perf_counter()
        first = k - self.error_days * self.source.n_ticks
        if all(kp in self._points for kp in range(first, k)):
            return
        try:    # the earliest forecast's history: every later one has it too
            self.source.history(first, self._history_len())
        except ValueError as exc:      # the source does not reach back that far
            log.warning("error scenarios: no forecasts before tick %d (%s); until the run has its own, "
                        "each missing day's scenario is the point forecast (weight %.3g each)",
                        k, exc, self.cfg.error_scenario_weight / max(self.error_days, 1))
            self._points.update({kp: None for kp in range(first, k) if kp not in self._points})
            return
        for kp in range(first, k):
            if kp not in self._points:
                fc, _ = self.forecast(kp, self.known_now(kp))
                self._points[kp] = planned_point(fc, LOAD_SERIES, self.cfg.demand_p90_weight)
        log.info("error scenarios: %d past forecasts in %.2f s", k - first, time.perf_counter() - t_start)

    def past_errors(self, k):
        """Errors of the forecasts issued at tick ``k``'s tick of day on the last
        ``error_days`` days, most recent first (``None`` for a day without one): what the
        source's history says those steps were, less what was forecast."""
        day_ticks, n = self.source.n_ticks, self.horizon
        points = [self._points.get(k - j * day_ticks) for j in range(1, self.error_days + 1)]
        back = max((j for j, p in enumerate(points, start=1) if p is not None), default=0)
        if not back:
            return points
        # one read of the days back to the oldest forecast: day j's steps start j days before k
        past = self.source.history(k, back * day_ticks)
        start = lambda j: (back - j) * day_ticks  # noqa: E731
        return [None if p is None else
                forecast_errors(p, {s: past[s][start(j):start(j) + n] for s in p})
                for j, p in enumerate(points, start=1)]

    def update_jobs(self):
        """Take the source's deferrable jobs when they change (a new day, the feed came back),
        normalised for the deferrable board's rating (:meth:`DeferrableLoad.update`); what the
        source and the board did to an odd job is logged and stored as a ``deferrable_job``
        event once per job and day, with the job named."""
        if self.deferrable and hasattr(self.source, "jobs"):
            jobs = self.source.jobs()
            notes = self.source.job_notes() if hasattr(self.source, "job_notes") else ()
            if self.deferrable.update(getattr(self.source, "day", None), jobs, self.n_ticks, self.tick_s, notes):
                log.info("%s: %d deferrable job(s): %s", self.policy, len(self.deferrable.ledger),
                         self.deferrable.ledger.jobs.tolist())
            for text in self.deferrable.untold():     # the benches that only meter stay quiet
                log.log(logging.WARNING if self.record_all else logging.DEBUG, "%s: deferrable %s", self.policy, text)
                if self.record_all and self.store is not None:
                    self.store.event(self.clock() - self.t0, self.deferrable.board, "deferrable_job", text)

    def decide_naive(self, k, e_j, islanded):
        """The rule-based baseline: PV -> loads -> storage -> grid on what is known now;
        deferrable jobs are served as soon as their window opens."""
        demand_now, _, _ = self.source.now(k)
        pv_now = self.source.sun_now(k) * self.pv_capability_w
        lim = 0.0 if islanded else None
        jobs_w = 0.0
        if self.deferrable:
            jobs_w = min(float(self.deferrable.planning().need_w(k, self.tick_s).sum()),
                         float(self.deferrable.headroom_w(demand_now)))
        return naive_step(e_j, pv_now, demand_now, self.cfg, lim, lim, deferrable_w=jobs_w), pv_now

    def optimise(self, k, e_j, fc, islanded, now=None):
        """Plan tick ``k`` from stored energy ``e_j`` [J] and the fans ``fc``.

        Returns ``(decision, pv_w [N], demand_w [N, L], import_price_per_j [N])``: the
        :class:`Decision` and the forecast it planned on (the decision record stores it). An
        exception in the optimiser or its inputs gives the naive rule's step instead, with status
        ``fallback:<exception>`` and the traceback logged: a tick never goes without a decision.
        """
        # the feed tells the demand to serve, the prices and the sun now: step 0 is known
        now = self.known_now(k) if now is None else now
        n = self.horizon
        pv, demand = np.full(n, now["pv_avail_w"]), np.tile(np.asarray(now["demand_w"], float), (n, 1))
        imp = np.full(n, now["import_price_per_j"])
        try:
            window = forecast_inputs(fc, self.cfg, LOAD_SERIES, now, tick=k, calibration=self.energy_calibration,
                                     errors=self.past_errors(k) if self.error_days else None)
            pv, demand, imp = window["pv_avail_w"], window["demand_w"], window["import_price_per_j"]
            window.update(p_imp_max_w=np.full(n, 0.0 if islanded else self.cfg.p_imp_max_w),
                          p_exp_max_w=np.full(n, 0.0 if islanded else self.cfg.p_exp_max_w))
            if self.deferrable:    # jobs ask no more than the board's room beside its own demand
                room_w = self.deferrable.headroom_w(demand)
                window.update(jobs=self.deferrable.plan_jobs(k, self.cfg.n_jobs, room_w, self.tick_s),
                              p_def_max_w=room_w)
            # the day is scored with its stored energy at the terminal value, as the perfect-foresight optimum is
            window = pad_day_end(window, self.n_ticks - k, self.cfg)
            decision = self.mpc.solve(e_j, **window)
        except Exception as exc:
            log.exception("optimiser failed at tick %d", k)
            decision = naive_step(e_j, pv[0], demand[0], self.cfg,
                                  0.0 if islanded else None, 0.0 if islanded else None)
            decision.status = "fallback:%s" % type(exc).__name__
        return decision, pv, demand, imp

    def send(self, k, sp):
        """Send tick ``k``'s setpoints ``sp`` (name -> (mode, value)) and wait for the acks.

        Returns name -> the telemetry snapshot the board took when it applied the setpoint (the
        tick boundary the meters use), ``None`` for a board that did not ack; rejected or clamped
        setpoints and missing acks are stored as events.
        """
        sent = {name: self.fleet.send_setpoint(name, k, mode, value) for name, (mode, value) in sp.items()}
        t_sent = self.clock()
        acks = self.fleet.wait_acks(sent, _ACK_TIMEOUT_S)
        for name, seq in sent.items():
            ack = acks.get(name)
            if not self.record_all:
                continue
            self.store.setpoint(k, name, seq if seq is not None else -1, sp[name][0], sp[name][1],
                                ack is not None, (ack[1] - t_sent) if ack else None,
                                ack[0] if ack else None)
            if ack and ack[0] != P.ACK_OK:
                self.store.event(self.clock() - self.t0, name, "setpoint_" + (
                    "rejected" if ack[0] == P.ACK_REJECTED else "limited"),
                    "tick %d: %g asked, the board %s it" % (
                        k, sp[name][1], "refused" if ack[0] == P.ACK_REJECTED else "clamped"))
        missing = [n for n in sent if n not in acks]
        if missing and self.record_all:
            self.store.event(self.clock() - self.t0, None, "no_ack", "tick %d: %s" % (k, ", ".join(missing)))
        snap = self.fleet.snapshot()
        return {n: (s["snapshot"][1] if s["snapshot"] and n in acks else None) for n, s in snap.items()}

    def meter(self, k, boundary):
        """Record the measured dispatch of tick ``k - 1`` from two tick-boundary snapshots."""
        prev, self.prev_snapshot = self.prev_snapshot, boundary
        if prev is None:
            return
        t = k - 1
        energies = metering.tick_energies(prev, boundary)
        # each board's mean power over its own window, as the tick's power: the window is
        # the tick stretched by the edge's decision time, which must not count as shed load
        w = metering.tick_powers(prev, boundary, energies)
        tick_j = {n: (p * self.tick_s if p is not None else None) for n, p in w.items()}
        demand, imp, exp = self.source.now(t)
        jobs_w = None
        if self.deferrable and tick_j.get(self.deferrable.board) is not None:
            jobs_w = self.deferrable.meter(t, tick_j[self.deferrable.board], demand, self.tick_s)
        v0 = prev["grid"]["v_bus_v"] if prev.get("grid") else None
        v1 = boundary["grid"]["v_bus_v"] if boundary.get("grid") else None
        residual = metering.balance_residual_j(energies, v0, v1, self.c_bus)
        truth = self.source.truth()
        grid_j = tick_j.get("grid")
        cost = economics.bill(grid_j, imp, exp) if grid_j is not None else None
        st = boundary.get("storage")
        e_st = (estimate.storage_energy_j(st["v_port_v"], st["i_port_a"], self.c_storage_f,
                                          self.esr_storage_ohm) if st else None)
        row = {"pv_w": w.get("pv"), "storage_w": w.get("storage"), "grid_w": w.get("grid"),
               "load1_w": w.get("load1"), "load2_w": w.get("load2"), "load3_w": w.get("load3"),
               "pv_available_w": float(truth["pv_available_w"][t]),
               "load1_demand_w": float(demand[0]), "load2_demand_w": float(demand[1]),
               "load3_demand_w": float(demand[2]), "storage_energy_j": e_st,
               "bus_voltage_v": v1, "import_price_per_j": float(imp), "export_price_per_j": float(exp),
               "cost": cost, "balance_residual_j": residual, "deferrable_w": jobs_w}
        self.store.dispatch(self.policy, t, row)
        self.measured.append(row)
        if self.record_all:
            for board, kind, detail in self.health.balance(residual, self.tick_s):
                self.store.event(self.clock() - self.t0, board, kind, "tick %d: %s" % (t, detail))

    def _feed_health(self, rows):
        """Give Health the telemetry rows it has not seen; ``rows`` is the fleet's log since its
        last drain (it only grows until drained)."""
        for _, name, _, _, tel in rows[self._health_fed:]:
            self.health.telemetry(name, tel)
        self._health_fed = len(rows)

    def persist(self, k, t_rel, decision, fc, src, sp, operator_note="", storage_energy_j=None):
        rows = self.fleet.drain_telemetry()
        self._feed_health(rows)      # the reports that came during the tick (the post-ack ones too)
        self._health_fed = 0
        if not self.record_all:
            self.fleet.drain_events()
            self.store.commit()
            return
        for t_s, name, role, seq, tel in rows:
            self.store.telemetry(t_s - self.t0, k, name, role or name, seq, tel)
        for t_s, name, kind, detail in self.fleet.drain_events():
            self.store.event(t_s - self.t0, name, kind, detail)
        for series, qs in fc.items():
            for q, values in qs.items():
                self.store.forecast(k, series, q, values[: self.horizon])
        plan = {key: np.asarray(v).round(5).tolist() for key, v in decision.plan.items()} if decision.plan else None
        sources = sorted(set(src.values()))
        self.store.decision(k, t_rel, decision.status, decision.solve_time_s,
                            None if np.isnan(decision.objective) else float(decision.objective),
                            ",".join(sources), {n: v for n, (m, v) in sp.items()}, plan,
                            reason=_explain(decision, sp) + (" [%s]" % operator_note if operator_note else ""),
                            operator_mode=self.operator.mode,
                            details=_details(decision, self.solve_cpu_s, storage_energy_j))
        snap = self.fleet.snapshot()
        for name, s in snap.items():
            link = self.fleet.boards[name].link
            errs = link.errors if link is not None else {}
            self.store.board(name, role=s["role"], board_id=self.fleet.boards[name].board_id,
                             firmware_version=s["firmware_version"],
                             link=getattr(link, "kind", None),
                             last_seen_s=(s["last_seen_s"] - self.t0) if s["last_seen_s"] else None,
                             frames_ok=errs.get("frames_ok", 0),
                             # corrupt on the wire: CRC, framing and oversize alike
                             crc_errors=(errs.get("crc_errors", 0) + errs.get("framing_errors", 0)
                                         + errs.get("oversize_errors", 0)),
                             auth_errors=errs.get("auth_errors", 0), replay_errors=errs.get("replay_errors", 0),
                             failsafe_events=self.fleet.boards[name].failsafe_events,
                             replayed_hellos=s.get("replayed_hellos", 0),
                             t_ms_regressions=s.get("t_ms_regressions", 0),
                             bad_data=plausibility.rejected(self.fleet, name))
        self.store.commit()

    # -- the tick --------------------------------------------------------------------
    def check_health(self, t_rel):
        self._feed_health(self.fleet.telemetry_peek())
        for board, kind, detail in self.health.check(set(self.fleet.stale(self.health.stale_s))):
            log.warning("board %s: %s (%s)", board, kind, detail)
            if self.record_all:
                self.store.event(t_rel, board, kind, detail)

    def tick(self, k):
        """One tick ``k``: read the source, observe, decide (MPC, operator, or the naive rule),
        send, meter tick ``k - 1`` and store the decision record."""
        t_start = self.clock()
        if hasattr(self.source, "begin_tick"):     # a live source (the lab feed) reads tick k now
            self.source.begin_tick(k)
        self.update_jobs()
        self.check_health(t_start - self.t0)
        snap, e_j, islanded = self.observe()
        if e_j is None:     # no estimate: the safe rule, which leaves the storage idle
            if self.record_all:
                self.store.event(t_start - self.t0, "storage", "no_telemetry",
                                 "tick %d: %s; the safe rule decides, storage idle" % (k, self.energy_note))
            decision, pv_now = self.decide_naive(k, float("nan"), islanded)
            decision.status = "fallback:no_storage_estimate"
            decision.reason = self.energy_note or "no storage estimate"
            fc, src = {}, {}
        else:
            if self.e0_j is None:
                self.e0_j = e_j
            decision, fc, src, pv_now = self.planner.plan(k, e_j, islanded)
        planned = dispatch.setpoints(decision, pv_now, self.v_ref, islanded, self.source.now(k)[0],
                                     deferrable_load=self.deferrable.board if self.deferrable else None)
        sp, operator_note = planned, ""
        if self.record_all:     # operator commands are for the bench the dashboard shows
            try:
                for cmd, status, text in self.operator.poll(self.store.conn, self.store.started_at):
                    self.store.event(t_start - self.t0, cmd["board"], "operator_" + status,
                                     "%s by %s: %s" % (cmd["kind"], cmd["user"], text))
                sp, operator_note = self.operator.setpoints(k, planned, self.last_setpoints)
            except Exception:   # a broken command queue must not stop the tick
                log.exception("operator commands failed at tick %d", k)
            if islanded and sp["storage"][0] != P.MODE_ISLAND:
                # no operator mode may take the bus away from storage while the grid is lost
                sp = dict(sp, storage=(P.MODE_ISLAND, sp["storage"][1]))
        boundary = self.send(k, sp)
        self.meter(k, boundary)
        if self.deferrable:
            self.deferrable.sent(k, decision.p_deferrable_w, self.tick_s)
        self.solve_times_s.append(decision.solve_time_s)
        self.statuses.append(decision.status)
        self.last_setpoints = sp
        self.persist(k, t_start - self.t0, decision, fc, src, sp, operator_note,
                     storage_energy_j=None if e_j is None else float(e_j))
        log.info("%s tick %d/%d: %s in %.2f ms, storage %.1f J, grid %+.2f W", self.policy, k + 1, self.n_ticks,
                 decision.status, 1e3 * decision.solve_time_s, e_j, decision.p_grid_w)
        return decision

    def resume(self, point):
        """Carry on with a run the edge left when it died (:mod:`picogrid.edge.control.resume`):
        the day's start energy, the solver record of the summary, the source's observations so
        far and the jobs' delivered energy, all from the rows ``point`` read from the store.
        Returns the tick to run next (:meth:`run_day`'s ``first_tick``)."""
        self.e0_j = point.start_energy_j
        for d in point.decisions:
            self.statuses.append(d["status"])
            self.solve_times_s.append(d["solve_time_s"] or 0.0)
            if d["details"].get("solve_cpu_s") is not None:
                self.solve_cpu_s.append(d["details"]["solve_cpu_s"])
        self.measured = list(point.dispatch)
        if hasattr(self.source, "restore"):     # a live source: what it saw before the restart
            self.source.restore(point.dispatch, point.next_tick)
        if self.deferrable:
            if hasattr(self.source, "begin_tick"):
                self.source.begin_tick(point.next_tick)     # the day's jobs, as the next tick reads them
            self.update_jobs()
            for row in point.dispatch:
                if row.get("deferrable_w") is not None and row["tick"] < point.next_tick:
                    self.deferrable.ledger.deliver(row["tick"], row["deferrable_w"] * self.tick_s, self.tick_s)
        log.warning("%s: run resumed at tick %d of %d (%d decided before the restart)", self.policy,
                    point.next_tick, self.n_ticks, len(point.decisions))
        return point.next_tick

    def run_day(self, on_tick=None, first_tick=None):
        """Run every tick at its time, then close the last tick's metering. Returns the ticks
        run up to: fewer than ``n_ticks`` when :attr:`stop_requested` was set (logged).

        ``first_tick`` (from :meth:`resume`): a resumed run starts there, skipping the ticks
        whose time passed while the edge was down; a fresh run starts at 0."""
        late = 0 if first_tick is None else int((self.clock() - self.t0) // self.tick_s)
        first_tick = first_tick or 0
        if late > first_tick:
            log.warning("%s: ticks %d..%d passed while the edge was down: no decision for them",
                        self.policy, first_tick, min(late, self.n_ticks) - 1)
        for k in range(max(first_tick, late), self.n_ticks):
            wait = self.t0 + k * self.tick_s - self.clock()
            if wait > 0:
                self.sleep(wait)
            if self.stop_requested.is_set():
                log.warning("%s: day stopped before tick %d of %d", self.policy, k + 1, self.n_ticks)
                self.store.commit()
                return k
            self.tick(k)
            if on_tick:
                on_tick(k)
        wait = self.t0 + self.n_ticks * self.tick_s - self.clock()
        if wait > 0:
            self.sleep(wait)
        # the last boundary: repeat the last setpoints so every board reports its counters
        self.meter(self.n_ticks, self.send(self.n_ticks, self.last_setpoints))
        self.store.commit()
        return self.n_ticks


def _details(decision, solve_cpu_s, storage_energy_j=None):
    """The audit part of a decision record: why the optimiser chose what it chose, from what
    stored energy [J] (also where a resumed run finds its day's start, edge/control/resume.py)."""
    terms = {k: float(v) for k, v in (decision.objective_terms or {}).items()}
    return {"objective_terms": terms, "iterations": int(decision.iterations),
            "binding": list(getattr(decision, "binding", None) or []),
            "scenario_objectives": list(getattr(decision, "scenario_objectives", None) or []),
            # the values the plan was priced with, on the source's price scale (edge/optimizer/economics.py)
            "economics": dict(decision.economics),
            "shed_rule": decision.shed_rule,
            "storage_energy_j": storage_energy_j,
            "solve_cpu_s": solve_cpu_s[-1] if solve_cpu_s and decision.iterations else None}


def _explain(decision, sp):
    """One plain sentence on what the plan does now, for the operator."""
    parts = []
    if decision.p_storage_w > 0.01:
        parts.append("discharge storage %.2f W" % decision.p_storage_w)
    elif decision.p_storage_w < -0.01:
        parts.append("charge storage %.2f W" % -decision.p_storage_w)
    if decision.p_grid_w > 0.01:
        parts.append("import %.2f W" % decision.p_grid_w)
    elif decision.p_grid_w < -0.01:
        parts.append("export %.2f W" % -decision.p_grid_w)
    shed = [n for n, (m, v) in sp.items() if n.startswith("load") and m == 1]
    if shed:      # the rule that left no choice (edge/optimizer/optimize.py Decision.shed_rule)
        parts.append("shed " + ", ".join(shed) + (" (%s)" % decision.shed_rule if decision.shed_rule else ""))
    if sp["pv"][1] >= 0:
        parts.append("curtail PV to %.2f W" % sp["pv"][1])
    head = "" if decision.status.startswith("solved") else "[%s] " % decision.status
    return head + ("; ".join(parts) if parts else "hold")
