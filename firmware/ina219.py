# INA219 current/power monitor over I2C (TI datasheet SBOS448G). Only what the boards need:
# continuous shunt+bus conversion, 12-bit, PGA /8 (+-320 mV), shunt voltage read-out.
import struct

try:
    from micropython import const
except ImportError:
    def const(x):  # type: ignore[misc]  # CPython has no micropython.const
        return x

_REG_CONFIG = const(0x00)
_REG_SHUNT = const(0x01)
_CONFIG = const(0x399F)       # 32 V range, PGA /8, 12-bit, shunt and bus continuous
_SHUNT_LSB_V = 10e-6          # datasheet §8.6.2.2


class INA219:
    def __init__(self, i2c, address, shunt_ohm):
        self._i2c = i2c
        self._addr = address
        self._shunt = shunt_ohm
        self._buf = bytearray(2)
        struct.pack_into(">H", self._buf, 0, _CONFIG)
        self._i2c.writeto_mem(self._addr, _REG_CONFIG, self._buf)

    def current_a(self):
        self._i2c.readfrom_mem_into(self._addr, _REG_SHUNT, self._buf)
        return struct.unpack(">h", self._buf)[0] * _SHUNT_LSB_V / self._shunt

    def deinit(self):
        self._buf[0] = 0
        self._buf[1] = 0
        self._i2c.writeto_mem(self._addr, _REG_CONFIG, self._buf)   # power-down
