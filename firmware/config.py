# Board configuration: identity, role, link, limits and calibration, written at flash time.
# The file is board.json in the board's root (MicroPython has json, not TOML); the edge's
# site TOML is the source it is generated from (tools/flash.py, hil/bench.py).
import json

# the codec's ROLES (protocol.py), repeated because the edge imports this module on its own
# (picogrid.firmware.config); tests/test_protocol.py holds the two equal
ROLES = ("pv", "storage", "grid", "load1", "load2", "load3")
PRIORITIES = ("critical", "normal", "deferrable")

_DEFAULTS = {
    "hal": "rp2040",
    "link": {"type": "serial"},
    "loop_period_ms": 1,          # 1 kHz on the RP2040; the HIL bench runs 100 Hz
    "telemetry_period_ms": 250,
    "watchdog_ms": 5000,          # no valid setpoint for this long -> failsafe
    "priority": "normal",
    "key_hex": None,
    "limits": {},
    "gains": {},
}


class ConfigError(Exception):
    pass


def load(path="board.json"):
    """Read and validate a board config; raises ConfigError with the reason."""
    try:
        with open(path) as f:
            raw = json.load(f)
    except OSError:
        raise ConfigError("no board config at " + path)
    except ValueError:
        raise ConfigError("board config is not valid JSON: " + path)
    return validate(raw)


def validate(raw):
    cfg = {}  # type: dict
    for k in _DEFAULTS:
        cfg[k] = _DEFAULTS[k]
    for k in raw:
        cfg[k] = raw[k]
    for k in ("board_id", "role"):
        if k not in cfg:
            raise ConfigError("board config lacks " + k)
    if cfg["role"] not in ROLES:
        raise ConfigError("unknown role: " + str(cfg["role"]))
    if not 0 <= int(cfg["board_id"]) <= 255:
        raise ConfigError("board_id must be 0..255")
    if cfg["priority"] not in PRIORITIES:
        raise ConfigError("unknown priority: " + str(cfg["priority"]))
    if cfg["link"].get("type") == "tcp":
        if not cfg.get("key_hex") or len(cfg["key_hex"]) < 32:
            raise ConfigError("a TCP link needs key_hex (per-board HMAC key, >= 16 bytes)")
        if "port" not in cfg["link"]:
            raise ConfigError("a TCP link needs link.port")
        if cfg["hal"] != "sim" and not cfg.get("wifi", {}).get("ssid"):
            raise ConfigError("a TCP link on a Pico W needs wifi.ssid and wifi.password")
    if "current_range_a" not in cfg:
        raise ConfigError("board config lacks current_range_a (power-stage calibration)")
    cfg.setdefault("name", cfg["role"])
    return cfg
