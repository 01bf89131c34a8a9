"""Flash PicoGrid firmware onto Raspberry Pi Pico / Pico W boards, and list attached Picos.

``picogrid flash --port /dev/ttyACM0 --board load1 [--site FILE] [--dry-run]``
``picogrid flash --all [--site FILE] [--dry-run]``   (ports from ``[boards.NAME] port = ...``)
``picogrid boards``                                    (attached Picos: USB vendor id 0x2E8A)

Steps for one board: compile every firmware module except ``main.py`` with ``mpy-cross``
(bytecode: less RAM and no compile at boot), write that board's ``board.json`` (id, role,
priority, link, Wi-Fi, HMAC key, limits, gains, pins, calibration) from the site file and the
secrets file, copy all of it with ``mpremote``, reset the board, and verify by sending an
empty HELLO over USB serial and reading the board's HELLO back (role and id must match).

Secrets (per-board HMAC keys, Wi-Fi) never come from the site file: they are read from the
TOML file named by the environment variable ``PICOGRID_SECRETS``, else ``secrets/picogrid.toml``
in the repository (``secrets/`` is git-ignored)::

    [wifi]
    ssid = "lab-ap"
    password = "..."
    [boards.pv]
    key_hex = "64 hex digits"      # 32 random bytes: python -c "import os; print(os.urandom(32).hex())"

Re-flashing a board that already runs PicoGrid: its firmware ignores Ctrl-C on USB serial
(frames carry 0x03) and its hardware watchdog cannot be stopped, so mpremote cannot interrupt
it. Press RESET (or re-plug USB), then hold BOOTSEL within one second: ``main.py`` then
returns to the REPL without starting (``firmware/hal_rp2040.py``), and this command can run.

A board whose link is TCP (``[boards.NAME] link = {type = "tcp", port = 4242}``) must have a key;
a missing one is an error that names the file and the board.
"""

import argparse
import json
import logging
import os
import pathlib
import shlex
import subprocess
import sys
import time
import tomllib

from picogrid.edge.site import DEFAULT_SECRETS, board_ids, load_secrets, load_site  # noqa: F401

log = logging.getLogger(__name__)

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIRMWARE_DIR = ROOT / "firmware"
DEFAULT_SITE = ROOT / "edge" / "sites" / "lab.toml"
RASPBERRY_PI_VID = 0x2E8A           # USB vendor id of Raspberry Pi (Pico, Pico W in MicroPython)
# firmware files that are not deployed: the package marker and the bench-only HAL
_NOT_DEPLOYED = ("__init__.py", "hal_sim.py")
# lab kit wiring (board schematic of the PicoGrid SMPS/LED boards): ADC0/ADC1 on GP26/GP27
# through 1:6 dividers, I2C0 on GP4/GP5 to two INA219 (0.1 ohm shunts), PWM on GP16.
# A site file overrides them per board with [boards.NAME.pins] / [boards.NAME.calibration].
DEFAULT_PINS = {"adc_port": 26, "adc_bus": 27, "sda": 4, "scl": 5, "pwm": 16,
                "ina_port_addr": 0x40, "ina_bus_addr": 0x41}
DEFAULT_CALIBRATION = {"divider_port": 6.0, "divider_bus": 6.0, "offset_port_v": 0.0,
                       "offset_bus_v": 0.0, "shunt_port_ohm": 0.1, "shunt_bus_ohm": 0.1}
_HELLO_TIMEOUT_S = 8.0


class FlashError(Exception):
    """A flash step cannot go on; the message says why and what to do."""


def board_json(site, name, secrets, secrets_path="secrets"):
    """The ``board.json`` for a real board, validated by the firmware's own config check.

    Raises
    ------
    FlashError if the board is unknown, a TCP board lacks its key or Wi-Fi, a key is not
    hex of >= 16 bytes, or the firmware's validation refuses the result.
    """
    from picogrid.firmware import config as fw_config
    from picogrid.hil.bench import board_config

    if name not in site.get("boards", {}):
        raise FlashError("no board %r in the site file (boards: %s)" % (name, ", ".join(site.get("boards", {}))))
    b = site["boards"][name]
    bench = dict(site.get("bench", {}))
    cfg = board_config(name, board_ids(site)[name], dict(site, bench=bench))
    cfg["loop_period_ms"] = int(b.get("loop_period_ms", 1))
    cfg["pins"] = dict(DEFAULT_PINS, **b.get("pins", {}))
    cfg["calibration"] = dict(DEFAULT_CALIBRATION, **b.get("calibration", {}))
    cfg["hw_watchdog_ms"] = int(b.get("hw_watchdog_ms", 2000))
    cfg["link"] = dict(b.get("link", {"type": "serial"}))
    key = secrets.get("boards", {}).get(name, {}).get("key_hex")
    if cfg["link"].get("type") == "tcp":
        if not key:
            raise FlashError("board %s has a TCP link but no key: add [boards.%s] key_hex = "
                             "\"<64 hex digits>\" to %s" % (name, name, secrets_path))
        wifi = secrets.get("wifi", {})
        if not wifi.get("ssid"):
            raise FlashError("board %s has a TCP link but %s has no [wifi] ssid/password" % (name, secrets_path))
        cfg["wifi"] = {"ssid": wifi["ssid"], "password": wifi.get("password", "")}
    if key:
        try:
            raw = bytes.fromhex(key)
        except ValueError:
            raise FlashError("key_hex of board %s in %s is not hex" % (name, secrets_path))
        if len(raw) < 16:
            raise FlashError("key of board %s is %d bytes, at least 16 needed" % (name, len(raw)))
        cfg["key_hex"] = key
    try:
        return fw_config.validate(cfg)
    except fw_config.ConfigError as exc:
        raise FlashError("board %s: %s" % (name, exc))


def firmware_modules():
    """Firmware source files deployed to a board (sorted)."""
    return sorted(p for p in FIRMWARE_DIR.glob("*.py") if p.name not in _NOT_DEPLOYED)


def plan(name, port, cfg, build_dir, tools=None):
    """The exact commands that flash one board: list of argv lists.

    ``tools`` maps ``mpy-cross`` / ``mpremote`` to the executables (default: next to this
    Python, else on PATH).
    """
    tools = tools or find_tools()
    build_dir = pathlib.Path(build_dir)
    steps = []
    copies = []
    for src in firmware_modules():
        if src.name == "main.py":                 # the boot entry point stays source
            copies += ["fs", "cp", str(src), ":main.py", "+"]
            continue
        out = build_dir / (src.stem + ".mpy")
        steps.append([tools["mpy-cross"], "-march=armv6m", "-o", str(out), str(src)])
        copies += ["fs", "cp", str(out), ":" + out.name, "+"]
    copies += ["fs", "cp", str(build_dir / "board.json"), ":board.json", "+", "reset"]
    steps.append([tools["mpremote"], "connect", port] + copies)
    return steps


def find_tools():
    here = pathlib.Path(sys.executable).parent
    out = {}
    for tool in ("mpy-cross", "mpremote"):
        p = here / tool
        out[tool] = str(p) if p.exists() else tool
    return out


def redacted(cfg):
    """A copy of a board config with its secrets masked, for printing."""
    out = json.loads(json.dumps(cfg))
    if out.get("key_hex"):
        out["key_hex"] = "<%d-byte key>" % (len(out["key_hex"]) // 2)
    if out.get("wifi"):
        out["wifi"]["password"] = "<hidden>"
    return out


def verify_hello(port, cfg, timeout_s=_HELLO_TIMEOUT_S):
    """Ask the board on ``port`` for its HELLO and check role and id; returns the firmware version.

    A board with a key (``key_hex``, on any link: PROTOCOL.md §6) is asked with it, and its
    OFFER is answered to open a session, under whose key its HELLO then comes (as the edge does).

    Raises
    ------
    FlashError if no matching HELLO arrives in ``timeout_s``, or its HELLO is malformed.
    """
    import serial

    from picogrid.firmware import protocol as P

    key = bytes.fromhex(cfg["key_hex"]) if cfg.get("key_hex") else None
    if cfg["link"]["type"] != "serial":
        raise FlashError("board %s talks TCP: verify it from the edge (its HELLO arrives there)" % cfg["name"])
    dec = P.Decoder(key=key, side=P.SIDE_EDGE)
    deadline = time.time() + timeout_s
    with serial.Serial(port, 115200, timeout=0.1) as ser:
        seq = 1
        while time.time() < deadline:
            ser.write(b"\x00" + dec.encode(P.MSG_HELLO, cfg["board_id"], seq, b""))
            seq += 1
            t_end = time.time() + 0.5
            while time.time() < t_end:
                for msg_type, bid, _, payload in dec.feed(ser.read(256)):
                    if msg_type == P.MSG_OFFER and bid == cfg["board_id"]:
                        try:
                            (nonce,) = P.unpack_offer(payload)
                        except P.ProtocolError:
                            continue
                        answer = dec.answer(nonce, int.from_bytes(os.urandom(8), "little"))
                        ser.write(dec.encode(P.MSG_SESSION, cfg["board_id"], 0, answer))
                    if msg_type == P.MSG_HELLO and bid == cfg["board_id"]:
                        try:
                            role, fw, _, _ = P.unpack_hello(payload)
                        except P.ProtocolError as exc:
                            raise FlashError("board on %s sent a malformed HELLO: %s" % (port, exc)) from exc
                        if role != cfg["role"]:
                            raise FlashError("board on %s says role %s, expected %s" % (port, role, cfg["role"]))
                        return fw
    raise FlashError("no HELLO from board %s (id %d) on %s within %.0f s" % (cfg["name"], cfg["board_id"], port, timeout_s))


def flash_board(name, port, site, secrets, secrets_path, build_root, dry_run, out):
    cfg = board_json(site, name, secrets, secrets_path)
    build_dir = pathlib.Path(build_root) / name
    steps = plan(name, port, cfg, build_dir)
    out.write("# board %s (id %d, role %s) on %s\n" % (name, cfg["board_id"], cfg["role"], port))
    out.write("# board.json: %s\n" % json.dumps(redacted(cfg), sort_keys=True))
    for argv in steps:
        out.write(" ".join(shlex.quote(a) for a in argv) + "\n")
    if dry_run:
        return 0
    build_dir.mkdir(parents=True, exist_ok=True)
    bj = build_dir / "board.json"
    bj.write_text(json.dumps(cfg, indent=1))
    os.chmod(bj, 0o600)          # it holds the board's key
    for argv in steps:
        run = subprocess.run(argv, capture_output=True, text=True)
        if run.returncode != 0:
            raise FlashError("step failed (%d): %s\n%s" % (run.returncode, " ".join(argv), run.stderr.strip()))
    time.sleep(2.0)              # the board resets and boots main.py
    fw = verify_hello(port, cfg)
    out.write("# verified: %s answers HELLO, firmware %s\n" % (name, fw))
    return 0


def main(argv=None):
    """``picogrid flash``; returns the exit status (2 on a usage or flash error)."""
    ap = argparse.ArgumentParser(prog="picogrid flash", description=__doc__.split("\n\n")[0])
    ap.add_argument("--board", help="board name in the site file (pv, storage, grid, load1..3)")
    ap.add_argument("--port", help="serial port of the board (see `picogrid boards`)")
    ap.add_argument("--all", action="store_true", help="every board of the site file, on its `port`")
    ap.add_argument("--site", default=str(DEFAULT_SITE), help="site TOML (default: the lab bench)")
    ap.add_argument("--secrets", help="secrets TOML (default: $PICOGRID_SECRETS or secrets/picogrid.toml)")
    ap.add_argument("--build-dir", default=str(ROOT / "build" / "flash"))
    ap.add_argument("--dry-run", action="store_true", help="print the exact steps, run nothing")
    args = ap.parse_args(argv)
    out = sys.stdout
    try:
        site = load_site(args.site)
        secrets, secrets_path = load_secrets(args.secrets)
        if args.all == bool(args.board):
            raise FlashError("give either --board NAME (with --port) or --all")
        if args.board:
            if not args.port:
                raise FlashError("--board needs --port (list them with `picogrid boards`)")
            jobs = [(args.board, args.port)]
        else:
            missing = [n for n, b in site["boards"].items() if not b.get("port")]
            if missing:
                raise FlashError("--all needs a `port` for every board in the site file; missing: %s"
                                 % ", ".join(missing))
            jobs = [(n, b["port"]) for n, b in site["boards"].items()]
        for name, port in jobs:
            flash_board(name, port, site, secrets, secrets_path, args.build_dir, args.dry_run, out)
    except (FlashError, OSError, tomllib.TOMLDecodeError) as exc:
        sys.stderr.write("picogrid flash: %s\n" % exc)
        return 2
    return 0


def attached_picos():
    """Serial ports of attached Raspberry Pi USB devices: list of dicts (device, serial, description)."""
    from serial.tools import list_ports

    return [{"device": p.device, "serial_number": p.serial_number, "description": p.description,
             "vid_pid": "%04x:%04x" % (p.vid, p.pid or 0)}
            for p in list_ports.comports() if p.vid == RASPBERRY_PI_VID]


def boards_main(argv=None):
    """``picogrid boards``: print one line per attached Pico; returns 0 (1 when there is none)."""
    ap = argparse.ArgumentParser(prog="picogrid boards", description="list attached Picos (USB VID 0x2E8A)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    picos = attached_picos()
    if args.json:
        sys.stdout.write(json.dumps(picos) + "\n")
    elif not picos:
        sys.stdout.write("no Pico attached (no USB serial device with vendor id 0x2E8A)\n")
    for p in picos if not args.json else ():
        sys.stdout.write("%s  %s  serial %s  %s\n" % (p["device"], p["vid_pid"], p["serial_number"], p["description"]))
    return 0 if picos else 1
