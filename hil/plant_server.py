"""The plant simulator process: steps the bench in real time and serves the boards' sensors.

Each virtual board's simulation HAL (``firmware/hal_sim.py``) exchanges one UDP datagram
with this server per control-loop iteration on loopback:

* request  ``<BBH``: protocol version (1), role index in ``plant.ROLES``, PWM duty (u16)
* reply    ``<4f``:  v_port_v, i_port_a, v_bus_v, i_bus_a (what the board's sensors read)

The server integrates the physics up to the wall-clock time of every request (and every
few milliseconds when idle), so the bench runs in real time whatever the boards do. The
scenario (sun per tick, grid outages) is applied by tick, from a shared start time ``t0``.
Once per tick it appends the bench's true state to ``truth.jsonl`` for the tests: bus
voltage at the tick's end and its min/max over the tick, each role's energy into the bus and
mean power, the PV power available at that sun, and the faults in force.

Control channel (fault injection, :mod:`picogrid.hil.faults`): a datagram that starts with
``{`` is a JSON command, answered by one JSON datagram ``{"ok": true, ...}`` or
``{"ok": false, "error": ...}``. Commands (``cmd``):

* ``state``: the true state now, plus bus min/max [V] since the last ``mark`` and whether the
  bench kept real time (``realtime``: the longest gaps of the plant's stepping and of each
  board's loop, and how many exceeded 50 ms; the truth log has each tick's ``late_ms``);
* ``mark``: restart the bus min/max window;
* ``sensor_bias`` ``role``, ``bias`` (4 numbers added to v_port, i_port, v_bus, i_bus, or null);
* ``sensor_stuck`` ``role``, ``stuck`` (true: readings frozen at their present value);
* ``sensor_garbage`` ``role``, ``garbage`` (true: the board's sensors read NaN, which its
  simulation HAL reports as a peripheral fault, as the RP2040 HAL does an INA219 answering
  garbage; false: sane readings again);
* ``sun`` ``value`` (0..1 overrides the scenario's irradiance, null returns to it);
* ``grid`` ``connected`` (true/false overrides the scenario's outages, null returns to it);
* ``extra_load`` ``power_w`` (an unmodelled load drawn from the bus [W], 0 removes it).

Run: ``python -m picogrid.hil.plant_server CONFIG.json`` (written by ``hil.bench``).
"""

import json
import logging
import socket
import struct
import sys
import time

from picogrid.hil.plant import irradiance_for_power_fraction, ROLES, Plant

log = logging.getLogger(__name__)

REQUEST = struct.Struct("<BBH")
REPLY = struct.Struct("<4f")
PLANT_WIRE_VERSION = 1
_IDLE_TIMEOUT_S = 0.005
_MAX_CATCH_UP_S = 1.0
# a board whose control loop has not asked for 0.5 s is dead (killed, crashed): its PWM stops
# and its power stage carries no current, as on real hardware (0.5 s: 50 missed iterations,
# well above scheduling hiccups of a loaded test machine)
_DEAD_BOARD_S = 0.5
# real time, as a HIL rig checks it: the plant steps at least every _IDLE_TIMEOUT_S and each
# board's loop asks every sim_loop_period_ms (10 ms); a gap above _LATE_S (5 loop periods)
# means that process was not scheduled in time, and the bench did not keep real time then
_LATE_S = 0.05
_NAN = float("nan")


class PlantServer:
    """Real-time plant stepping plus the UDP sensor service.

    Parameters
    ----------
    config : dict with ``port`` (UDP, 0 = any), ``t0`` (unix time [s] of tick 0),
        ``tick_s`` [s], ``sun`` (list per tick, 0..1), ``grid_outages`` (list of
        ``[first_tick, last_tick]``), ``plant`` (parameter overrides), ``truth_path``.
    """

    def __init__(self, config):
        self.cfg = config
        self.plant = Plant(config.get("plant"), seed=config.get("seed", 1))
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", config.get("port", 0)))
        self.sock.settimeout(_IDLE_TIMEOUT_S)
        self.port = self.sock.getsockname()[1]
        self._last_wall = time.time()
        self._tick = None
        self._tick_energy = {r: 0.0 for r in ROLES}
        self._truth = open(config["truth_path"], "a") if config.get("truth_path") else None
        self.requests = 0
        self.bad_requests = 0
        self.commands = 0
        self.sun_override = None
        self._irradiance_cache = {}
        self.grid_override = None
        self.sensor_garbage = set()     # roles whose sensors read garbage (NaN)
        self._tick_vmin = self._tick_vmax = self.plant.v_bus
        self._mark_vmin = self._mark_vmax = self.plant.v_bus
        self._tick_start_s = None
        self._last_request_s = {}
        # real-time record: the longest gap [s] and the gaps above _LATE_S, of the plant's own
        # stepping ("plant") and of each board's requests (a board silent for _DEAD_BOARD_S is
        # dead, not late); over the run, and per tick for the truth log
        self.late = {"max_gap_s": {}, "late_gaps": {}}
        self._tick_late_s = 0.0

    def tick_at(self, wall_s):
        return int((wall_s - self.cfg["t0"]) // self.cfg["tick_s"])

    def _irradiance(self, fraction):
        key = round(fraction, 4)
        if key not in self._irradiance_cache:
            p = self.plant.p
            self._irradiance_cache[key] = irradiance_for_power_fraction(
                key, p["pv_isc_a"], p["pv_voc_v"], p["pv_thermal_voltage_v"])
        return self._irradiance_cache[key]

    def _apply_scenario(self, tick):
        if tick is None:
            return
        sun = self.cfg.get("sun") or [0.0]
        # the scenario gives PV power as a fraction of capability; the array needs irradiance
        self.plant.sun = self._irradiance(float(sun[min(max(tick, 0), len(sun) - 1)]))
        if self.sun_override is not None:
            self.plant.sun = self.sun_override
        outages = self.cfg.get("grid_outages") or []
        self.plant.grid_connected = not any(a <= tick <= b for a, b in outages)
        if self.grid_override is not None:
            self.plant.grid_connected = self.grid_override

    def _write_truth(self, tick):
        if self._truth is None or tick < 0:
            return
        pl = self.plant
        duration_s = max(pl.time_s - self._tick_start_s, 1e-9)
        row = {"tick": tick, "sun": pl.sun, "grid_connected": pl.grid_connected,
               "v_bus_v": pl.v_bus, "v_bus_min_v": self._tick_vmin, "v_bus_max_v": self._tick_vmax,
               "storage_energy_j": pl.storage_energy_j, "bus_energy_j": pl.bus_energy_j(),
               "duration_s": duration_s, "pv_available_w": pl.pv_available_w(),
               "extra_load_w": pl.extra_load_w,
               "late_ms": round(1e3 * self._tick_late_s, 1),   # longest late gap in the tick (0: kept real time)
               "faults": {"sensor_bias": sorted(pl.sensor_bias), "sensor_stuck": sorted(pl.sensor_stuck),
                          "sensor_garbage": sorted(self.sensor_garbage),
                          "sun_override": self.sun_override, "grid_override": self.grid_override},
               "energy_bus_j": {r: self._tick_energy[r] for r in ROLES},
               "p_bus_w": {r: self._tick_energy[r] / duration_s for r in ROLES}}
        self._truth.write(json.dumps(row) + "\n")
        self._truth.flush()

    def _gap(self, who, gap_s):
        """Record a gap between two steps of ``who`` (the plant, or a board's role)."""
        if who != "plant" and gap_s > _DEAD_BOARD_S:
            return          # a killed or restarted board: dead, not late
        if gap_s > self.late["max_gap_s"].get(who, 0.0):
            self.late["max_gap_s"][who] = gap_s
        if gap_s > _LATE_S:
            self.late["late_gaps"][who] = self.late["late_gaps"].get(who, 0) + 1
            self._tick_late_s = max(self._tick_late_s, gap_s)

    def realtime(self):
        """Whether the bench kept real time so far: ``{"kept": bool, "max_gap_ms": {who: ms},
        "late_gaps": {who: n}}`` (``who``: ``plant`` or a role; a gap is late above 50 ms)."""
        return {"kept": not self.late["late_gaps"],
                "max_gap_ms": {k: round(1e3 * v, 1) for k, v in self.late["max_gap_s"].items()},
                "late_gaps": dict(self.late["late_gaps"])}

    def catch_up(self):
        """Integrate the physics up to now (at most ``_MAX_CATCH_UP_S``, in 1 ms steps).

        When a tick boundary has passed since the last call, the old tick's truth row is
        written and the new tick's scenario applied first; the whole interval is then
        integrated under the new tick and charged to its row (an interval is at most a few
        ms while the server keeps up; a loaded host's longer gap blurs one boundary)."""
        now = time.time()
        self._gap("plant", now - self._last_wall)
        dt = min(now - self._last_wall, _MAX_CATCH_UP_S)
        self._last_wall = now
        tick = self.tick_at(now)
        if tick != self._tick:
            if self._tick is not None:
                self._write_truth(self._tick)
            self._tick_energy = {r: 0.0 for r in ROLES}
            self._tick_vmin = self._tick_vmax = self.plant.v_bus
            self._tick_start_s = self.plant.time_s
            self._tick_late_s = 0.0
            self._tick = tick
            self._apply_scenario(tick)
        for role, t in self._last_request_s.items():
            if now - t > _DEAD_BOARD_S:
                self.plant.set_duty(role, self.plant.duty_for_current(role, 0.0))
        if dt > 0:
            n = max(1, int(dt / 0.001 + 0.999))
            h = dt / n
            pl = self.plant
            for _ in range(n):
                pl.step(h)
                for r in ROLES:
                    self._tick_energy[r] += pl.p_bus[r] * h
                v = pl.v_bus
                if v < self._tick_vmin:
                    self._tick_vmin = v
                if v > self._tick_vmax:
                    self._tick_vmax = v
                if v < self._mark_vmin:
                    self._mark_vmin = v
                if v > self._mark_vmax:
                    self._mark_vmax = v

    # -- control channel (fault injection) ---------------------------------------------
    def state(self):
        """The bench's true state now (SI units), for the control channel's ``state``."""
        pl = self.plant
        return {"time_s": pl.time_s, "tick": self._tick, "sun": pl.sun,
                "grid_connected": pl.grid_connected, "v_bus_v": pl.v_bus,
                "v_bus_min_v": self._mark_vmin, "v_bus_max_v": self._mark_vmax,
                "v_pv_v": pl.v_pv, "storage_energy_j": pl.storage_energy_j,
                "pv_available_w": pl.pv_available_w(), "extra_load_w": pl.extra_load_w,
                "p_bus_w": dict(pl.p_bus), "v_port_v": dict(pl.v_port), "i_port_a": dict(pl.i_port),
                "duty": dict(pl.duty), "realtime": self.realtime()}

    def command(self, cmd):
        """Apply one control command (dict); returns the reply dict. Raises ValueError if bad."""
        if not isinstance(cmd, dict):
            raise ValueError("a command is a JSON object")
        name = cmd.get("cmd")
        pl = self.plant
        role = cmd.get("role")
        if name in ("sensor_bias", "sensor_stuck", "sensor_garbage") and role not in ROLES:
            raise ValueError("unknown role %r" % (role,))
        if name == "state":
            return self.state()
        if name == "mark":
            self._mark_vmin = self._mark_vmax = pl.v_bus
        elif name == "sensor_bias":
            bias = cmd.get("bias")
            if bias is None:
                pl.sensor_bias.pop(role, None)
            elif len(bias) != 4:
                raise ValueError("bias needs 4 numbers (v_port, i_port, v_bus, i_bus)")
            else:
                pl.sensor_bias[role] = tuple(float(b) for b in bias)
        elif name == "sensor_stuck":
            if cmd.get("stuck"):
                pl.sensor_stuck.pop(role, None)
                pl.sensor_stuck[role] = pl.measure(role)
            else:
                pl.sensor_stuck.pop(role, None)
        elif name == "sensor_garbage":
            if cmd.get("garbage"):
                self.sensor_garbage.add(role)
            else:
                self.sensor_garbage.discard(role)
        elif name == "sun":
            v = cmd.get("value")
            if v is not None and not 0.0 <= float(v) <= 1.5:
                raise ValueError("sun must be within 0..1.5 or null")
            self.sun_override = None if v is None else float(v)
            self._apply_scenario(self._tick)
        elif name == "grid":
            c = cmd.get("connected")
            self.grid_override = None if c is None else bool(c)
            self._apply_scenario(self._tick)
        elif name == "extra_load":
            w = float(cmd.get("power_w", 0.0))
            if not 0.0 <= w <= 10.0:
                raise ValueError("extra_load power_w must be within 0..10 W")
            pl.extra_load_w = w
        else:
            raise ValueError("unknown command %r" % (name,))
        log.info("control: %s", json.dumps(cmd))
        return {}

    def _handle_command(self, data, addr):
        self.catch_up()
        try:
            reply = dict(self.command(json.loads(data.decode("utf-8"))), ok=True)
        except (ValueError, TypeError, UnicodeError) as exc:
            reply = {"ok": False, "error": str(exc)}
        self.commands += 1
        self.sock.sendto(json.dumps(reply).encode("utf-8"), addr)

    def handle(self, data, addr):
        if data[:1] == b"{":
            self._handle_command(data, addr)
            return
        try:
            version, role_index, duty = REQUEST.unpack(data)
            if version != PLANT_WIRE_VERSION or role_index >= len(ROLES):
                raise ValueError("bad version or role")
        except (struct.error, ValueError):
            self.bad_requests += 1
            return
        role = ROLES[role_index]
        self.catch_up()
        self.plant.set_duty(role, duty)
        now = time.time()
        if role in self._last_request_s:
            self._gap(role, now - self._last_request_s[role])
        self._last_request_s[role] = now
        reading = (_NAN,) * 4 if role in self.sensor_garbage else self.plant.measure(role)
        self.sock.sendto(REPLY.pack(*reading), addr)
        self.requests += 1

    def serve_forever(self, stop_at=None):
        while stop_at is None or time.time() < stop_at:
            try:
                data, addr = self.sock.recvfrom(4096)
            except socket.timeout:
                self.catch_up()
                continue
            self.handle(data, addr)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="plant %(levelname)s %(message)s")
    with open(argv[0]) as f:
        config = json.load(f)
    server = PlantServer(config)
    # the launcher waits for this line to learn the port
    sys.stdout.write("PLANT_PORT %d\n" % server.port)
    sys.stdout.flush()
    server.serve_forever(config.get("stop_at"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
