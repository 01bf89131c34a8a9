"""The plant simulator process: steps the bench in real time and serves the boards' sensors.

Each virtual board's simulation HAL (``firmware/hal_sim.py``) exchanges one UDP datagram
with this server per control-loop iteration on loopback:

* request  ``<BBH``: protocol version (1), role index in ``plant.ROLES``, PWM duty (u16)
* reply    ``<4f``:  v_port_v, i_port_a, v_bus_v, i_bus_a (what the board's sensors read)

The server integrates the physics up to the wall-clock time of every request (and every
few milliseconds when idle), so the bench runs in real time whatever the boards do. The
scenario (sun per tick, grid outages) is applied by tick, from a shared start time ``t0``.
Once per tick it appends the bench's true state to ``truth.jsonl`` for the tests.

Run: ``python -m picogrid.hil.plant_server CONFIG.json`` (written by ``hil.bench``).
"""

import json
import logging
import socket
import struct
import sys
import time

from picogrid.hil.plant import ROLES, Plant

log = logging.getLogger(__name__)

REQUEST = struct.Struct("<BBH")
REPLY = struct.Struct("<4f")
PLANT_WIRE_VERSION = 1
_IDLE_TIMEOUT_S = 0.005
_MAX_CATCH_UP_S = 1.0


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

    def tick_at(self, wall_s):
        return int((wall_s - self.cfg["t0"]) // self.cfg["tick_s"])

    def _apply_scenario(self, tick):
        sun = self.cfg.get("sun") or [0.0]
        self.plant.sun = float(sun[min(max(tick, 0), len(sun) - 1)])
        outages = self.cfg.get("grid_outages") or []
        self.plant.grid_connected = not any(a <= tick <= b for a, b in outages)

    def _write_truth(self, tick):
        if self._truth is None or tick < 0:
            return
        row = {"tick": tick, "sun": self.plant.sun, "grid_connected": self.plant.grid_connected,
               "v_bus_v": self.plant.v_bus, "storage_energy_j": self.plant.storage_energy_j,
               "bus_energy_j": self.plant.bus_energy_j(),
               "energy_bus_j": {r: self._tick_energy[r] for r in ROLES}}
        self._truth.write(json.dumps(row) + "\n")
        self._truth.flush()

    def catch_up(self):
        """Integrate the physics up to now, tick boundary by tick boundary."""
        now = time.time()
        dt = min(now - self._last_wall, _MAX_CATCH_UP_S)
        self._last_wall = now
        tick = self.tick_at(now)
        if tick != self._tick:
            if self._tick is not None:
                self._write_truth(self._tick)
            self._tick_energy = {r: 0.0 for r in ROLES}
            self._tick = tick
            self._apply_scenario(tick)
        if dt > 0:
            n = max(1, int(dt / 0.001 + 0.999))
            h = dt / n
            for _ in range(n):
                self.plant.step(h)
                for r in ROLES:
                    self._tick_energy[r] += self.plant.p_bus[r] * h

    def handle(self, data, addr):
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
        self.sock.sendto(REPLY.pack(*self.plant.measure(role)), addr)
        self.requests += 1

    def serve_forever(self, stop_at=None):
        while stop_at is None or time.time() < stop_at:
            try:
                data, addr = self.sock.recvfrom(64)
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
