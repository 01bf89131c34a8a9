"""Human in the loop: the operator's mode, overrides and shed/restore commands.

The dashboard writes commands into the store's ``command`` table; once per tick the edge
applies the pending ones here, bounded by the same limits as the optimiser, and marks each
``applied`` (with the value really used) or ``rejected`` (with the reason). Modes:

* ``automatic``: the optimiser's setpoints go out, with any operator overrides on top;
* ``approve``: each tick's plan is only proposed; boards keep the last approved setpoints
  until the operator approves a plan (``approve`` with ``value`` = the plan's tick);
* ``manual``: the optimiser is not applied; boards keep their setpoints plus overrides.
"""

import logging
import time

from picogrid.firmware import protocol as P

log = logging.getLogger(__name__)

MODES = ("automatic", "approve", "manual")
LOADS = ("load1", "load2", "load3")


def setpoint_bounds(site):
    """Board -> (lo, hi) of what an operator may set: [W]; grid: bus voltage [V]; pv: cap [W].

    Storage: ``-charge_power_max_w .. discharge_power_max_w`` where the site gives them (a
    battery), else ``+-power_max_w``, as :func:`picogrid.edge.optimizer.mpc_config.config_from_site` reads.
    """
    v = float(site["bench"]["bus_voltage_v"])
    st = site["storage"]
    p_ch = float(st.get("charge_power_max_w", st.get("power_max_w")))
    p_dis = float(st.get("discharge_power_max_w", st.get("power_max_w")))
    bounds = {"pv": (0.0, float(site["pv"]["capability_w"])), "storage": (-p_ch, p_dis),
              "grid": (0.95 * v, 1.05 * v)}
    for name in LOADS:
        bounds[name] = (0.0, float(site["boards"][name].get("limits", {}).get("power_max_w", 1.0)))
    return bounds


class Operator:
    """Operator state and command application.

    Parameters
    ----------
    site : dict, parsed site TOML (limits)
    clock : callable, unix time [s]
    """

    def __init__(self, site, clock=time.time):
        self.bounds = setpoint_bounds(site)
        self.clock = clock
        self.mode = "automatic"
        self.overrides = {}          # board -> (mode, value)
        self.approved = None         # setpoints of the last approved plan
        self._held = None            # last setpoints before overrides (what manual mode holds)
        self._proposed = None        # the latest plan offered for approval, and its tick
        self._proposed_tick = None

    def _apply(self, cmd):
        kind, board = cmd["kind"], cmd["board"]
        if kind == "mode":
            if cmd["mode"] not in MODES:
                raise ValueError("unknown mode %r (one of %s)" % (cmd["mode"], ", ".join(MODES)))
            self.mode = cmd["mode"]
            return "mode %s" % self.mode
        if kind == "approve":
            if self.mode != "approve" or self._proposed is None:
                raise ValueError("no plan waiting for approval (mode %s)" % self.mode)
            if cmd["value"] is None or int(cmd["value"]) != self._proposed_tick:
                raise ValueError("the plan of tick %s is no longer the latest (tick %s)"
                                 % (cmd["value"], self._proposed_tick))
            self.approved = dict(self._proposed)
            return "approved the plan of tick %d" % self._proposed_tick
        if board not in self.bounds:
            raise ValueError("unknown board %r" % (board,))
        if kind == "clear_override":
            self.overrides.pop(board, None)
            return "%s back to the plan" % board
        if kind in ("shed", "restore"):
            if board not in LOADS:
                raise ValueError("only loads can be shed or restored, not %s" % board)
            if kind == "shed":
                self.overrides[board] = (P.MODE_SHED, 0.0)
                return "%s shed" % board
            self.overrides.pop(board, None)
            return "%s restored" % board
        if kind == "override":
            value = cmd["value"]
            if value is None or value != value:
                raise ValueError("override needs a finite value")
            lo, hi = self.bounds[board]
            used = min(max(float(value), lo), hi)
            self.overrides[board] = (P.MODE_NORMAL, used)
            note = "" if used == value else " (clamped from %g to the limits [%g, %g])" % (value, lo, hi)
            return "%s = %g%s" % (board, used, note)
        raise ValueError("unknown command kind %r" % (kind,))

    def poll(self, conn, since=None):
        """Apply every pending command in ``conn`` (sqlite3) in order; returns the results
        ``[(command, status, text)]``. A command queued before ``since`` (unix time [s]: this
        run's start) was meant for an earlier run and is rejected, not applied."""
        rows = conn.execute("SELECT id, kind, board, value, mode, user, created_at FROM command "
                            "WHERE status='pending' ORDER BY id").fetchall()
        results = []
        for row in rows:
            cmd = dict(zip(("id", "kind", "board", "value", "mode", "user"), row[:6]))
            try:
                if since is not None and row[6] < since:
                    raise ValueError("queued before this run started (for an earlier run): not applied")
                text, status = self._apply(cmd), "applied"
            except (ValueError, TypeError) as exc:
                text, status = str(exc), "rejected"
            log.info("operator %s: %s %s -> %s", cmd["user"], cmd["kind"], cmd["board"] or "", text)
            conn.execute("UPDATE command SET status=?, applied_at=?, result=? WHERE id=?",
                         (status, self.clock(), text, cmd["id"]))
            results.append((cmd, status, text))
        return results

    def setpoints(self, tick, planned, last_sent):
        """What to send this tick, from the optimiser's ``planned`` setpoints (name -> (mode, value)).

        Manual and approve mode hold the last setpoints as they were *before* operator
        overrides (``last_sent`` only on the first call), so restore and clear undo them.

        Returns (setpoints, note) where note says in words what the operator changed.
        """
        # what is held is the setpoints *before* operator overrides, so restore/clear undo them
        held = self._held or last_sent or planned
        if self.mode == "automatic":
            base, note = dict(planned), ""
        elif self.mode == "approve":
            base = dict(self.approved or held)
            note = "plan of tick %d awaits approval" % tick
        else:
            base, note = dict(held), "manual"
        self._held = dict(base)
        self._proposed, self._proposed_tick = dict(planned), tick
        for board, sp in self.overrides.items():
            base[board] = sp
        if self.overrides:
            note = (note + "; " if note else "") + "operator: " + ", ".join(
                "%s %s" % (b, "shed" if m == P.MODE_SHED else "%g" % v) for b, (m, v) in sorted(self.overrides.items()))
        return base, note
