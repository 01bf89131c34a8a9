# RP2040 hardware layer: ADC voltage dividers, two INA219s (port side, bus side), one
# 100 kHz PWM channel driving the power stage's current reference, and the hardware
# watchdog. Pins and calibration come from board.json ("pins", "calibration").
import machine
import time

from ina219 import INA219

_PWM_HZ = 100000
_ADC_FULL_SCALE_V = 3.3
_MAINTENANCE_WINDOW_MS = 1000
_CHECK_MS = 1000             # the INA219s' registers are checked this often


def describe(exc):
    """An exception as a fault's text: the errno's name for an OSError (``ETIMEDOUT``: no
    device answers), a ValueError's message (a garbage reading: ``config reads 0xffff``), else
    the type and message (``KeyError: sim``)."""
    if isinstance(exc, OSError) and exc.args and isinstance(exc.args[0], int):
        try:
            import errno
            name = errno.errorcode.get(exc.args[0])
            if name:
                return name
        except ImportError:
            pass
    if isinstance(exc, ValueError) and str(exc):
        return str(exc)
    return "%s: %s" % (type(exc).__name__, exc)


def maintenance_requested(window_ms=_MAINTENANCE_WINDOW_MS):
    """True if the BOOTSEL button is held within ``window_ms`` of boot.

    The running firmware ignores Ctrl-C on USB serial (frames carry 0x03) and the hardware
    watchdog cannot be stopped once started, so mpremote cannot stop it to re-flash: press
    RESET (or re-plug USB), then press and hold BOOTSEL within one second (held while power
    comes up, it starts the UF2 bootloader instead), and main.py returns to the REPL before
    the watchdog starts. ``rp2.bootsel_button()`` needs MicroPython >= 1.20; older builds: False.
    """
    try:
        import rp2
        press = rp2.bootsel_button
    except (ImportError, AttributeError):
        return False
    t0 = time.ticks_ms()
    while time.ticks_diff(time.ticks_ms(), t0) < window_ms:
        if press():
            return True
        time.sleep_ms(20)
    return False


class Rp2040Hal:
    """Same methods as hal_sim.SimHal: measure(out), set_current_ref(i_a), feed_watchdog(),
    and the fault interface board.py uses: ``fault`` (None, or "part: error" while a sensor
    fails, from __init__ on) and recover(out) (try the parts again, then measure).

    The power stage comes up first at 0 A and the watchdog last; the ADCs, the I2C bus and
    the INA219s may fail (absent, miswired, answering garbage) without stopping the board.
    """

    def __init__(self, cfg):
        self._pins = pins = cfg["pins"]
        self._cal = cal = cfg["calibration"]
        self._pwm = machine.PWM(machine.Pin(pins["pwm"]))
        self._pwm.freq(_PWM_HZ)
        self._lo, self._hi = cfg["current_range_a"]
        self.set_current_ref(0.0)
        # volts per ADC count, including the divider ratio and a measured gain trim
        self._k_port = _ADC_FULL_SCALE_V / 65535 * cal["divider_port"]
        self._k_bus = _ADC_FULL_SCALE_V / 65535 * cal["divider_bus"]
        self._off_port = cal.get("offset_port_v", 0.0)
        self._off_bus = cal.get("offset_bus_v", 0.0)
        self._inas = []  # type: list[INA219]
        self.fault = None  # type: str | None
        self._next_check = time.ticks_ms()
        self._open_sensors()
        self._wdt = machine.WDT(timeout=cfg.get("hw_watchdog_ms", 2000))
        self.misses = 0

    def _open_sensors(self):
        """(Re)start the ADCs, the I2C bus and both INA219s; False, with ``fault`` set, when a
        part fails."""
        pins, cal = self._pins, self._cal
        part = "adc"
        self._inas = []
        try:
            self._adc_port = machine.ADC(machine.Pin(pins["adc_port"]))
            self._adc_bus = machine.ADC(machine.Pin(pins["adc_bus"]))
            part = "i2c0"
            i2c = machine.I2C(0, sda=machine.Pin(pins["sda"]), scl=machine.Pin(pins["scl"]), freq=400000)
            for addr, shunt in ((pins.get("ina_port_addr", 0x40), cal["shunt_port_ohm"]),
                                (pins.get("ina_bus_addr", 0x41), cal["shunt_bus_ohm"])):
                ina = INA219(i2c, addr, shunt)
                part = ina.name
                ina.configure()
                self._inas.append(ina)
        except Exception as exc:
            self.fault = part + ": " + describe(exc)
            self._inas = []
            return False
        self.fault = None
        return True

    def duty_for(self, i_a):
        d = int((i_a - self._lo) / (self._hi - self._lo) * 65535 + 0.5)
        return 0 if d < 0 else 65535 if d > 65535 else d

    def set_current_ref(self, i_a):
        self._pwm.duty_u16(self.duty_for(i_a))

    def measure(self, out):
        """Fill ``out``; False, with ``fault`` set, if a part fails or reads garbage."""
        if self.fault is not None:
            return False
        ina = self._inas
        part = "adc"
        try:
            out[0] = self._adc_port.read_u16() * self._k_port + self._off_port
            out[2] = self._adc_bus.read_u16() * self._k_bus + self._off_bus
            part = ina[0].name
            out[1] = ina[0].current_a()
            part = ina[1].name
            out[3] = ina[1].current_a()
            now = time.ticks_ms()
            if time.ticks_diff(now, self._next_check) >= 0:   # about once a second
                self._next_check = time.ticks_add(now, _CHECK_MS)
                part = ina[0].name
                ina[0].check()
                part = ina[1].name
                ina[1].check()
        except Exception as exc:
            self.fault = part + ": " + describe(exc)
            return False
        return True

    def recover(self, out):
        """Try the sensors again after a fault: True when they answer and read sanely."""
        return self._open_sensors() and self.measure(out)

    def ticks_ms(self):
        return time.ticks_ms()

    def feed_watchdog(self):
        self._wdt.feed()

    def deinit(self):
        self.set_current_ref(0.0)
        self._pwm.deinit()
        for ina in self._inas:
            try:
                ina.deinit()
            except OSError:
                pass
