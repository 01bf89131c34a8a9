# Entry point on every board: read board.json, build the hardware layer, the role and the
# link, then run the board's tasks. A crash is reported as a fault event; on the RP2040 the
# hardware watchdog then resets the board because nothing feeds it any more. A hardware layer
# that cannot be built at all (a bad pin in board.json, a dead PWM) is a peripheral fault the
# board reports on its link (PROTOCOL.md section 7), not a silent stop.
import asyncio
import sys

import config


def _make_hal(cfg):
    if cfg["hal"] == "sim":
        from hal_sim import SimHal
        return SimHal(cfg)
    from hal_rp2040 import Rp2040Hal
    return Rp2040Hal(cfg)


class _NoHal:
    """Stands in for a hardware layer whose construction failed: a fault for good."""

    def __init__(self, fault):
        self.fault = fault
        self.misses = 0

    def measure(self, out):
        return False

    def recover(self, out):
        return False

    def set_current_ref(self, i_a):
        pass

    def feed_watchdog(self):
        pass

    def deinit(self):
        pass


def _make_link(cfg):
    link = cfg["link"]
    if link["type"] == "serial":
        from link_serial import SerialLink
        return SerialLink()
    if link["type"] == "tcp":
        from link_tcp import TcpLink, connect_wifi
        if cfg["hal"] != "sim":
            connect_wifi(cfg["wifi"])     # before the hardware watchdog starts (in the HAL)
        return TcpLink(int(link["port"]), link.get("host", "0.0.0.0"))
    raise config.ConfigError("unsupported link type: " + str(link["type"]))


def run(path="board.json"):
    import roles
    from board import Board
    import protocol as P

    cfg = config.load(path)
    if cfg["hal"] != "sim":
        from hal_rp2040 import maintenance_requested
        if maintenance_requested():
            print("PicoGrid: BOOTSEL held at boot: firmware not started, REPL free for mpremote")
            return
    link = _make_link(cfg)
    try:
        hal = _make_hal(cfg)
    except Exception as exc:   # keep the link: the board says what failed
        hal = _NoHal(_hal_fault(exc))
    board = Board(cfg, hal, roles.make(cfg), link)

    def on_error(loop, context):
        exc = context.get("exception")
        board.event(P.EV_FAULT, "task error: %r" % (exc,))
        board.healthy = False

    loop = asyncio.get_event_loop()
    loop.set_exception_handler(on_error)
    try:
        asyncio.run(board.run())
    except KeyboardInterrupt:
        pass
    except Exception as exc:   # report, then let the watchdog / launcher restart us
        board.event(P.EV_FAULT, "fatal: %r" % (exc,))
        raise
    finally:
        hal.set_current_ref(0.0)
        hal.deinit()
        link.deinit()
        asyncio.new_event_loop()


def _hal_fault(exc):
    try:
        from hal_rp2040 import describe
        return "hal: " + describe(exc)
    except ImportError:
        return "hal: %r" % (exc,)


if __name__ == "__main__":
    run(sys.argv[1] if len(sys.argv) > 1 else "board.json")
