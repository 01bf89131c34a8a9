"""Board and bench health, judged each tick from what the fleet saw.

* stale: a board not heard from for ``stale_s`` (dead, unplugged, link down); the others
  keep running, and a silent grid board is treated as a lost grid (islanded operation);
* stuck sensor: real sensors always show noise, so telemetry whose four measurements stay
  bit-identical over ``stuck_samples`` reports is flagged;
* faulted: a board whose telemetry carries ``FLAG_FAULT`` (a sensor or peripheral failed,
  PROTOCOL.md section 7: its readings are zeros, so it is not also called stuck);
* energy balance: a bus residual above ``residual_alarm_w`` for two ticks in a row means a
  sensor bias or a load nobody meters.

Changes of state come back as events ``(board, kind, detail)`` for the store.
"""

_MEASURED = ("v_bus_v", "v_port_v", "i_port_a", "p_bus_w")
_FLAG_FAULT = 4     # protocol.FLAG_FAULT


class Health:
    """Per-board health tracking. ``stale_s`` [s], ``residual_alarm_w`` [W]."""

    def __init__(self, boards, stale_s=1.0, stuck_samples=8, residual_alarm_w=0.2):
        self.stale_s = stale_s
        self.stuck_samples = stuck_samples
        self.residual_alarm_w = residual_alarm_w
        self.stale = {b: False for b in boards}
        self.stuck = {b: False for b in boards}
        self._same = {b: 0 for b in boards}
        self._last = {b: None for b in boards}
        self.faulted = {b: False for b in boards}
        self._fault_seen = {b: False for b in boards}
        self._residual_high = 0

    def telemetry(self, board, t):
        """Feed every telemetry report in arrival order (from ``Fleet.drain_telemetry``)."""
        self._fault_seen[board] = bool((t.get("flags") or 0) & _FLAG_FAULT)
        if self._fault_seen[board]:
            self._same[board], self._last[board] = 0, None
            return
        values = tuple(t[k] for k in _MEASURED)
        self._same[board] = self._same[board] + 1 if values == self._last[board] else 0
        self._last[board] = values

    def check(self, stale_boards):
        """Events for boards whose stale or stuck state changed since the last call."""
        events = []
        for b in self.stale:
            now_stale = b in stale_boards
            if now_stale != self.stale[b]:
                events.append((b, "board_stale" if now_stale else "board_back",
                               "no telemetry for %.1f s" % self.stale_s if now_stale else "talking again"))
                self.stale[b] = now_stale
            now_stuck = self._same[b] >= self.stuck_samples
            if now_stuck != self.stuck[b]:
                events.append((b, "sensor_stuck" if now_stuck else "sensor_ok",
                               "%d identical readings" % self._same[b] if now_stuck else "readings move again"))
                self.stuck[b] = now_stuck
            if self._fault_seen[b] != self.faulted[b]:
                self.faulted[b] = self._fault_seen[b]
                events.append((b, "board_fault" if self.faulted[b] else "board_fault_clear",
                               "telemetry flags a sensor or peripheral fault" if self.faulted[b]
                               else "no fault flag any more"))
        return events

    def balance(self, residual_j, tick_s):
        """An event when the bus residual [J] over a tick [s] stays high two ticks running
        (an unmetered tick, ``None``, breaks the run: high, unknown, high is not two in a row)."""
        if residual_j is None:
            self._residual_high = 0
            return []
        high = abs(residual_j) / tick_s > self.residual_alarm_w
        self._residual_high = self._residual_high + 1 if high else 0
        if self._residual_high == 2:
            return [(None, "balance_alarm", "bus energy residual %.2f W for 2 ticks: a sensor is off "
                     "or a load is not metered" % (residual_j / tick_s))]
        return []
