# INA219 current/power monitor over I2C (TI datasheet SBOS448G). Only what the boards need:
# continuous shunt+bus conversion, 12-bit, PGA /8 (+-320 mV), shunt voltage read-out, and
# sanity checks: a part that does not answer raises OSError (from machine.I2C), one that
# answers garbage raises ValueError (hal_rp2040 reports either as a peripheral fault).
import struct

try:
    from micropython import const
except ImportError:
    def const(x):  # type: ignore[misc]  # CPython has no micropython.const
        return x

_REG_CONFIG = const(0x00)
_REG_SHUNT = const(0x01)
_REG_BUS = const(0x02)
_CONFIG = const(0x399F)       # 32 V range, PGA /8, 12-bit, shunt and bus continuous
_SHUNT_LSB_V = 10e-6          # datasheet §8.6.2.2
_SHUNT_MAX = const(32000)     # +-320 mV at PGA /8: a larger magnitude is not a reading
_BUS_MAX = const(6500)        # 26 V (the part's bus input range) in 4 mV steps


class INA219:
    def __init__(self, i2c, address, shunt_ohm):
        """No bus traffic here: ``configure()`` programs and checks the part."""
        self._i2c = i2c
        self._addr = address
        self._shunt = shunt_ohm
        self._buf = bytearray(2)
        self.name = "ina219@0x%02x" % address

    def _read(self, reg):
        self._i2c.readfrom_mem_into(self._addr, reg, self._buf)
        return struct.unpack(">H", self._buf)[0]

    def configure(self):
        struct.pack_into(">H", self._buf, 0, _CONFIG)
        self._i2c.writeto_mem(self._addr, _REG_CONFIG, self._buf)
        self.check()

    def check(self):
        """Raise ValueError unless the config register reads back and the bus voltage is
        within the part's range (a part reset, replaced or answering garbage)."""
        c = self._read(_REG_CONFIG)
        if c != _CONFIG:
            raise ValueError("config reads 0x%04x" % c)
        b = self._read(_REG_BUS)
        if b >> 3 > _BUS_MAX:
            raise ValueError("bus register reads 0x%04x" % b)

    def current_a(self):
        self._i2c.readfrom_mem_into(self._addr, _REG_SHUNT, self._buf)
        raw = struct.unpack(">h", self._buf)[0]
        if raw > _SHUNT_MAX or raw < -_SHUNT_MAX:
            raise ValueError("shunt reads 0x%04x" % (raw & 0xFFFF))
        return raw * _SHUNT_LSB_V / self._shunt

    def deinit(self):
        self._buf[0] = 0
        self._buf[1] = 0
        self._i2c.writeto_mem(self._addr, _REG_CONFIG, self._buf)   # power-down
