"""``picogrid site init FILE`` and ``picogrid site check FILE``: a site file for a new site.

``init`` writes a commented site TOML (docs/design.md §7) for a home (a battery, kW, 5-minute
ticks over a real day, like ``edge/sites/site.toml``) or a bench (a supercapacitor or a small
battery, W, the lab feed's compressed day, like ``edge/sites/lab.toml``) from flags with
defaults; ``check`` validates one: every key known (else a did-you-mean), values in range and
plausible for the kind of site, the boards' roles and priorities consistent, and then what the
edge itself checks (:func:`picogrid.edge.site.load_site`,
:func:`picogrid.edge.optimizer.mpc_config.config_from_site`). Usage: docs/own-data.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import pathlib
import re
import sys
import tomllib

KINDS = ("home", "bench")
PROFILE_OF_KIND = {"home": "site", "bench": "lab"}
KIND_OF_PROFILE = {v: k for k, v in PROFILE_OF_KIND.items()}
ROLES = ("pv", "storage", "grid", "load1", "load2", "load3")
PRIORITIES = ("critical", "normal", "deferrable")
J_PER_KWH = 3.6e6

#: every key the code reads, per section (``boards.*`` per board; ``plant`` is the HIL plant's)
KNOWN = {
    "": {"profile", "bench", "storage", "grid", "pv", "loads", "optimizer", "deferrable", "reserve",
         "scenario", "boards", "web", "plant"},
    "bench": {"n_ticks", "tick_s", "horizon", "watchdog_ms", "telemetry_period_ms", "sim_loop_period_ms",
              "bus_voltage_v", "bus_capacitance_f"},
    "storage": {"energy_min_j", "energy_max_j", "power_max_w", "charge_power_max_w", "discharge_power_max_w",
                "efficiency_charge", "efficiency_discharge", "capacitance_f", "esr_ohm", "voltage_min_v",
                "voltage_max_v", "esr_loss_max"},
    "grid": {"import_max_w", "export_max_w"},
    "pv": {"capability_w"},
    "loads": {"voll_per_j", "rating_w"},
    "deferrable": {"n_jobs", "power_max_w", "voll_per_j"},
    "reserve": {"enabled", "duration_s", "penalty_per_j"},
    "scenario": {"pv_capability_w", "load_rating_w", "grid_fee_eur_per_mwh", "cents_per_j_per_eur_per_mwh"},
    "web": {"users", "secret_key"},
    "board": {"role", "priority", "limits", "id", "port", "link", "gains", "current_range_a", "pins",
              "calibration"},
    "limits": {"power_max_w", "voltage_min_v", "voltage_max_v", "bus_voltage_v", "failsafe_power_w"},
}
#: largest power [W] and stored energy [J] plausible per kind; a home's powers below
#: HOME_MIN_W (other than 0) are kW written under a _w name
POWER_MAX_W = {"home": 1.0e5, "bench": 1.0e3}
ENERGY_MAX_J = {"home": 3.6e9, "bench": 1.0e6}
HOME_MIN_W = 10.0
#: where what a new user looks for lives instead (unknown keys, lower case, trailing s dropped)
HINTS = {k: v for keys, v in (
    (("tarif", "tariff", "price", "import_price", "export_price"),
     "prices come with the data or the feed, per tick; the tariff's mean import price is [optimizer] "
     "price_scale_per_j [c/J], the export price sets [optimizer] terminal_value_per_j"),
    (("battery", "capacity_kwh", "capacity"),
     "storage is [storage] energy_min_j / energy_max_j [J] (1 kWh = 3.6e6 J)"),
) for k in keys}


def _optimizer_keys():
    from picogrid.edge.optimizer.mpc_config import MpcConfig
    owned = {"n_jobs", "p_def_max_w", "voll_deferrable_per_j", "reserve", "reserve_duration_s",
             "reserve_penalty_per_j"}
    return {f.name for f in dataclasses.fields(MpcConfig)} - owned


# ----------------------------------------------------------------------------------- init

@dataclasses.dataclass
class SiteSpec:
    """What ``site init`` asks for; powers [kW], energy [kWh], prices [site currency / kWh]."""

    kind: str = "home"
    storage: str = "battery"            # battery | supercap
    storage_kwh: float = 10.0           # nominal capacity (battery)
    soc_min: float = 0.10
    soc_max: float = 0.95
    storage_kw: float = 5.0
    efficiency: float = 0.95            # one way
    capacitance_f: float = 0.5          # supercap
    voltage_min_v: float = 2.0
    voltage_max_v: float = 13.5
    esr_ohm: float = 4.0
    pv_kw: float = 6.0
    import_max_kw: float = 10.0
    export_max_kw: float = 7.0
    loads: tuple = ("critical", "normal", "deferrable")
    load_kw: float = 1.5
    import_price_per_kwh: float = 18.7  # mean import price the economics are stated for
    export_price_per_kwh: float = 4.0
    voll_per_kwh: tuple = (1000.0, 200.0, 50.0)     # critical, normal, deferrable
    cycle_cost_per_kwh: float = 2.0
    tick_s: float = 300.0
    horizon_h: float = 24.0


#: the bench's defaults: the lab bench of edge/sites/lab.toml (prices in c/J there, x 3.6e6 per kWh)
BENCH = dict(storage="supercap", storage_kwh=1e-4, storage_kw=0.002, efficiency=0.91, pv_kw=0.00387,
             import_max_kw=0.006, export_max_kw=0.006, load_kw=0.001, import_price_per_kwh=2.8 * J_PER_KWH,
             export_price_per_kwh=0.8 * J_PER_KWH, voll_per_kwh=(40 * J_PER_KWH, 12 * J_PER_KWH, 6 * J_PER_KWH),
             cycle_cost_per_kwh=0.02 * J_PER_KWH, tick_s=2.5, horizon_h=150 / 3600)


def _g(x):
    """A number as TOML text (shortest round-tripping form)."""
    text = repr(float(f"{float(x):.10g}"))     # 1.1 * 6000 -> 6600.0, not 6600.000000000001
    return text if "e" in text or "." in text else text + ".0"


def render_site(spec: SiteSpec) -> str:
    """The commented site TOML of ``spec``.

    Raises
    ------
    ValueError
        On an unknown kind, storage or priority, no or more than three loads, or a value out of range.
    """
    if spec.kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {spec.kind!r}")
    if spec.storage not in ("battery", "supercap"):
        raise ValueError(f"storage must be battery or supercap, got {spec.storage!r}")
    if not 1 <= len(spec.loads) <= 3 or any(p not in PRIORITIES for p in spec.loads):
        raise ValueError(f"give one to three load priorities out of {PRIORITIES}, got {list(spec.loads)}")
    if not 0 <= spec.soc_min < spec.soc_max <= 1:
        raise ValueError(f"need 0 <= soc_min < soc_max <= 1, got {spec.soc_min}, {spec.soc_max}")
    for name in ("storage_kwh", "storage_kw", "pv_kw", "load_kw", "tick_s", "horizon_h", "import_price_per_kwh"):
        if not (math.isfinite(getattr(spec, name)) and getattr(spec, name) > 0):
            raise ValueError(f"{name} must be finite and > 0, got {getattr(spec, name)!r}")
    day_s = 86400.0 if spec.kind == "home" else 150.0
    n_ticks = day_s / spec.tick_s
    if abs(n_ticks - round(n_ticks)) > 1e-9:
        raise ValueError(f"tick_s must divide the {'day' if spec.kind == 'home' else 'bench day'} "
                         f"({day_s:g} s), got {spec.tick_s:g}")
    n_ticks = int(round(n_ticks))
    horizon = max(1, int(round(spec.horizon_h * 3600 / spec.tick_s)))
    home = spec.kind == "home"
    w = 1e3
    price_j = spec.import_price_per_kwh / J_PER_KWH
    p_store = spec.storage_kw * w
    out = [
        f"# A {spec.kind} site written by `picogrid site init`; check it with `picogrid site check FILE`.",
        "# Units: SI in the names (W, J, V, s); prices per joule in the site's currency unit (cents, like",
        "# the lab feed: 1 c/kWh = 2.778e-7 c/J). Every key: docs/own-data.md and edge/sites/*.toml.",
        f'profile = "{PROFILE_OF_KIND[spec.kind]}"   # "site" = home-scale models and forecasters, "lab" = the bench\'s',
        "",
        "[bench]",
        f"n_ticks = {n_ticks}              # ticks per day",
        f"tick_s = {_g(spec.tick_s)}            # tick [s]",
        f"horizon = {horizon}              # MPC horizon [ticks] = {horizon * spec.tick_s / 3600:g} h",
        f"watchdog_ms = {60000 if home else 8000}          # no valid setpoint for this long [ms] -> converter failsafe",
        f"telemetry_period_ms = {1000 if home else 250}   # each converter's telemetry period [ms]",
        "sim_loop_period_ms = 10     # control loop of the simulated converters on the HIL bench [ms]",
        f"bus_voltage_v = {_g(380.0 if home else 7.0)}        # DC bus voltage the grid converter holds [V]",
        f"bus_capacitance_f = {_g(0.005 if home else 0.1)}    # bulk capacitance on the bus [F]",
        "",
        "[storage]",
    ]
    if spec.storage == "battery":
        e_nom = spec.storage_kwh * J_PER_KWH
        out += [
            f"# a {spec.storage_kwh:g} kWh battery kept between {100 * spec.soc_min:g} % and {100 * spec.soc_max:g} % "
            "state of charge",
            f"energy_min_j = {_g(spec.soc_min * e_nom)}",
            f"energy_max_j = {_g(spec.soc_max * e_nom)}",
            f"charge_power_max_w = {_g(p_store)}      # bus side [W]",
            f"discharge_power_max_w = {_g(p_store)}   # bus side [W]",
        ]
    else:
        out += [
            f"# a {spec.capacitance_f:g} F supercapacitor used between {spec.voltage_min_v:g} V and "
            f"{spec.voltage_max_v:g} V (E = C V^2 / 2)",
            f"capacitance_f = {_g(spec.capacitance_f)}",
            f"esr_ohm = {_g(spec.esr_ohm)}             # equivalent series resistance [ohm]",
            f"voltage_min_v = {_g(spec.voltage_min_v)}",
            f"voltage_max_v = {_g(spec.voltage_max_v)}",
            f"power_max_w = {_g(p_store)}          # charge and discharge limit, bus side [W]",
            "esr_loss_max = 0.1          # largest ESR share of the discharge power",
        ]
    out += [
        "# one-way efficiencies, converter included",
        f"efficiency_charge = {_g(spec.efficiency)}",
        f"efficiency_discharge = {_g(spec.efficiency)}",
        "",
        "[grid]",
        f"import_max_w = {_g(spec.import_max_kw * w)}   # grid import limit [W]",
        f"export_max_w = {_g(spec.export_max_kw * w)}   # grid export limit [W] (0: no export)",
        "",
        "[pv]",
        f"capability_w = {_g(spec.pv_kw * w)}   # PV power at full sun, bus side [W]",
        "",
        "[loads]",
        "# value of lost load per priority class [c/J]: what a joule not served costs; keep it above any price",
        "voll_per_j = { " + ", ".join(f"{p} = {_g(v / J_PER_KWH)}" for p, v in zip(PRIORITIES, spec.voll_per_kwh))
        + " }",
    ]
    if home:
        out.append(f"rating_w = {_g(spec.load_kw * w)}   # each load's 99th-percentile demand maps onto this [W]")
    out += [
        "",
        "[optimizer]",
        "# the tariff: the mean import price the values of lost load, cycling cost and terminal value are",
        f"# stated for [c/J] ({spec.import_price_per_kwh:g} c/kWh); each plan rescales them to its own prices",
        f"price_scale_per_j = {_g(price_j)}",
        f"cycle_cost_per_j = {_g(spec.cycle_cost_per_kwh / J_PER_KWH)}   # storage wear per J charged or discharged "
        f"({spec.cycle_cost_per_kwh:g} c/kWh)",
        "# value of energy left at the horizon's end [c/J]: the export price x discharge efficiency",
        f"terminal_value_per_j = {_g(spec.export_price_per_kwh / J_PER_KWH * spec.efficiency)}",
        'solver = "highs"            # the exact LP every tick (edge/optimizer/simplex.py)',
    ]
    deferrable = [k for k, p in enumerate(spec.loads, start=1) if p == "deferrable"]
    out += [
        "",
        "[deferrable]",
        "# deferrable jobs (energy within a window) delivered by the first load of the deferrable class",
        f"n_jobs = {2 if deferrable else 0}                  # job slots of the optimiser (0: none)",
        f"power_max_w = {_g(spec.load_kw * w if deferrable else 0.0)}   # power the jobs may take [W]",
        "",
        "[reserve]",
        "enabled = false             # keep energy for an outage of the critical loads (switch on per site)",
        "duration_s = 3600.0         # islanded time the reserve covers [s]",
    ]
    if home:
        out += [
            "",
            "[scenario]",
            "# scaling of the shipped real days when they are replayed on this site (models/scenario.py)",
            f"pv_capability_w = {_g(spec.pv_kw * w)}",
            f"load_rating_w = {_g(spec.load_kw * w)}",
            "grid_fee_eur_per_mwh = 150.0    # added to the spot price for the import price [EUR/MWh]",
            "cents_per_j_per_eur_per_mwh = 2.7778e-8   # 100 c / 3.6e9 J",
        ]
    out += [
        "",
        "# The converters (boards). Real boards: give each its USB serial port, e.g. port = \"/dev/ttyACM0\",",
        "# or a Pico W link = { type = \"tcp\", host = \"192.168.4.21\", port = 4210 } with its key in the",
        "# secrets file (outside git). The HIL bench needs neither.",
        "[boards.pv]",
        'role = "pv"',
        f"limits = {{ power_max_w = {_g(1.1 * spec.pv_kw * w)} }}",
        "",
        "[boards.storage]",
        'role = "storage"',
        (f"limits = {{ power_max_w = {_g(p_store)} }}" if spec.storage == "battery" else
         f"limits = {{ voltage_min_v = {_g(spec.voltage_min_v)}, voltage_max_v = {_g(spec.voltage_max_v)}, "
         f"power_max_w = {_g(p_store)} }}"),
        "",
        "[boards.grid]",
        'role = "grid"',
        f"limits = {{ bus_voltage_v = {_g(380.0 if home else 7.0)} }}",
    ]
    for k, priority in enumerate(spec.loads, start=1):
        out += ["", f"[boards.load{k}]", f'role = "load{k}"',
                f'priority = "{priority}"       # critical, normal or deferrable (shed last .. first)',
                f"limits = {{ power_max_w = {_g(spec.load_kw * w)} }}"]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------- check

def _line_of(text, section, key):
    """1-based line of ``key`` in ``[section]`` (``''``: the top level) of the TOML ``text``, or None."""
    current = ""
    pat = re.compile(r"(^|[{,\s])" + re.escape(key) + r"\s*=")
    for i, line in enumerate(text.splitlines()):
        code = line.split("#", 1)[0].strip()
        head = re.match(r"^\[\s*([^\]]+?)\s*\]$", code)
        if head:
            current = re.sub(r"\s*\.\s*", ".", head.group(1))
            if current == (f"{section}.{key}" if section else key):
                return i + 1
        elif current == section and pat.search(code):
            return i + 1
    return None


class _Check:
    def __init__(self, text):
        self.text = text
        self.problems = []

    def add(self, section, key, message):
        line = _line_of(self.text, section, key) if key else None
        where = (f"[{section}] " if section else "") + (key or "")
        self.problems.append(f"{'line %d: ' % line if line else ''}{where.strip()}: {message}")

    def keys(self, section, table, known):
        for key in table:
            if key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
                hint = HINTS.get(key.lower().rstrip("s")) or (f"did you mean {close[0]!r}?" if close else
                                                              f"known: {', '.join(sorted(known))}")
                self.add(section, key, f"unknown key ({hint})")

    def number(self, section, table, key, lo=None, hi=None, integer=False, lo_open=False):
        if key not in table:
            return None
        v = table[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
            self.add(section, key, f"must be {'an integer' if integer else 'a number'}, got {v!r}")
            return None
        if not math.isfinite(v) or (lo is not None and (v <= lo if lo_open else v < lo)) or (hi is not None and v > hi):
            rng = f"{'(' if lo_open else '['}{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
            self.add(section, key, f"{v!r} is outside {rng}")
            return None
        return v


def check_site(path):
    """Problems of the site file at ``path``, as messages naming the line, section and key.

    Returns
    -------
    (dict or None, list of str)
        The parsed site (None if it does not parse) and the problems; no problems = usable.
    """
    from picogrid.edge.optimizer.mpc_config import config_from_site
    from picogrid.edge.site import board_ids, load_site

    path = pathlib.Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        return None, [f"cannot read: {exc}"]
    try:
        site = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return None, [f"not valid TOML: {exc}"]
    c = _Check(text)
    c.keys("", site, KNOWN[""])
    profile = site.get("profile")
    if profile not in KIND_OF_PROFILE:
        c.add("", "profile", f"must be \"site\" (a home) or \"lab\" (a bench), got {profile!r}")
    kind = KIND_OF_PROFILE.get(profile, "home")
    for section in ("bench", "storage", "grid", "pv", "loads", "optimizer", "boards"):
        if not isinstance(site.get(section), dict):
            c.add("", None, f"the [{section}] section is missing")
    for section in ("bench", "storage", "grid", "pv", "loads", "deferrable", "reserve", "scenario", "web"):
        if isinstance(site.get(section), dict):
            c.keys(section, site[section], KNOWN[section])
    if isinstance(site.get("optimizer"), dict):
        c.keys("optimizer", site["optimizer"], _optimizer_keys())
    b = site.get("bench", {})
    n_ticks = c.number("bench", b, "n_ticks", 1, integer=True)
    tick_s = c.number("bench", b, "tick_s", 0, lo_open=True)
    c.number("bench", b, "horizon", 1, integer=True)
    for key in ("watchdog_ms", "telemetry_period_ms", "sim_loop_period_ms"):
        c.number("bench", b, key, 1, integer=True)
    c.number("bench", b, "bus_voltage_v", 0, lo_open=True)
    c.number("bench", b, "bus_capacitance_f", 0, lo_open=True)
    if kind == "home" and n_ticks and tick_s and abs(n_ticks * tick_s - 86400) > 1e-6:
        c.add("bench", "n_ticks", f"n_ticks x tick_s = {n_ticks * tick_s:g} s: a home's day is 86400 s")
    st = site.get("storage", {})
    for key in ("efficiency_charge", "efficiency_discharge"):
        c.number("storage", st, key, 0, 1, lo_open=True)
    for key in ("capacitance_f", "esr_ohm"):
        c.number("storage", st, key, 0, lo_open=True)
    c.number("storage", st, "esr_loss_max", 0, 1, lo_open=True)
    vmin, vmax = c.number("storage", st, "voltage_min_v", 0), c.number("storage", st, "voltage_max_v", 0)
    if vmin is not None and vmax is not None and not vmin < vmax:
        c.add("storage", "voltage_max_v", f"must exceed voltage_min_v ({vmin!r})")
    for key in ("energy_min_j", "energy_max_j"):
        c.number("storage", st, key, 0, ENERGY_MAX_J[kind])
    if "capacitance_f" not in st and "energy_max_j" not in st:
        c.add("storage", None, "give energy_min_j and energy_max_j (a battery) or capacitance_f with "
                               "voltage_min_v and voltage_max_v (a supercapacitor)")
    if not any(k in st for k in ("power_max_w", "charge_power_max_w")):
        c.add("storage", None, "give power_max_w or charge_power_max_w and discharge_power_max_w")
    # every power: in range for the kind of site (a 5 MW home or a 6 W home is a unit slip)
    powers = [(s, site.get(s, {}), k) for s in ("storage", "grid", "pv", "loads", "deferrable", "bench", "scenario")
              for k in site.get(s, {}) if k.endswith("_w") and isinstance(site.get(s), dict)]
    for name, board in (site.get("boards") or {}).items():
        if isinstance(board, dict) and isinstance(board.get("limits"), dict):
            powers += [(f"boards.{name}", board["limits"], k) for k in board["limits"] if k.endswith("_w")]
    for section, table, key in powers:
        v = c.number(section, table, key, 0, POWER_MAX_W[kind])
        if v is None and isinstance(table.get(key), (int, float)) and table[key] > POWER_MAX_W[kind]:
            c.problems[-1] += f": beyond a {kind}'s {POWER_MAX_W[kind]:g} W; is the unit W?"
        if kind == "home" and v is not None and 0 < v < HOME_MIN_W and key != "failsafe_power_w":
            c.add(section, key, f"{v:g} W is too small for a home: kW written as W?")
    voll = site.get("loads", {}).get("voll_per_j", {})
    if not isinstance(voll, dict) or not voll:
        c.add("loads", "voll_per_j", f"must be a table of priority class -> value of lost load [c/J], e.g. "
                                     f"{{ critical = 2.78e-4, normal = 5.56e-5, deferrable = 1.39e-5 }}")
        voll = {}
    for p, v in voll.items():
        if p not in PRIORITIES:
            close = difflib.get_close_matches(p, PRIORITIES, n=1)
            c.add("loads", "voll_per_j", f"unknown priority class {p!r}" + (f" (did you mean {close[0]!r}?)"
                                                                          if close else ""))
        elif isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
            c.add("loads", "voll_per_j", f"{p} must be a number >= 0, got {v!r}")
    boards = site.get("boards") or {}
    roles = {}
    for name, board in boards.items():
        sec = f"boards.{name}"
        if not isinstance(board, dict):
            c.add("boards", name, "must be a table [boards.NAME]")
            continue
        c.keys(sec, board, KNOWN["board"])
        if isinstance(board.get("limits"), dict):
            c.keys(sec, board["limits"], KNOWN["limits"])
        role = board.get("role")
        if role not in ROLES:
            close = difflib.get_close_matches(str(role), ROLES, n=1)
            c.add(sec, "role", f"unknown role {role!r}" + (f" (did you mean {close[0]!r}?)" if close else
                                                            f"; roles: {', '.join(ROLES)}"))
            continue
        if role in roles:
            c.add(sec, "role", f"role {role!r} is already boards.{roles[role]}'s")
        roles[role] = name
        if name != role:
            c.add(sec, "role", f"the board of role {role!r} must be named [boards.{role}] (the edge finds "
                               f"boards by role name)")
        if role.startswith("load"):
            priority = board.get("priority", "normal")
            if priority not in PRIORITIES:
                close = difflib.get_close_matches(str(priority), PRIORITIES, n=1)
                c.add(sec, "priority", f"unknown priority {priority!r}" + (f" (did you mean {close[0]!r}?)"
                                                                          if close else ""))
            elif voll and priority not in voll:
                c.add(sec, "priority", f"[loads] voll_per_j gives no value for {priority!r}")
        elif "priority" in board:
            c.add(sec, "priority", "only loads have a priority")
    for role in ("pv", "storage", "grid"):
        if role not in roles:
            c.add("boards", None, f"no [boards.{role}]")
    loads = sorted(int(r[4]) for r in roles if r.startswith("load"))
    if not loads:
        c.add("boards", None, "no load board: give [boards.load1] (up to load3)")
    elif loads != list(range(1, len(loads) + 1)):
        c.add("boards", None, f"load boards must be load1, load2, .. without holes, got {['load%d' % k for k in loads]}")
    dfr = site.get("deferrable", {})
    if isinstance(dfr, dict) and c.number("deferrable", dfr, "n_jobs", 0, integer=True):
        if not any(b.get("priority") == "deferrable" for n, b in boards.items()
                   if isinstance(b, dict) and str(b.get("role", "")).startswith("load")):
            c.add("deferrable", "n_jobs", "jobs need a load board of priority \"deferrable\" to deliver them")
    if not c.problems:    # what the edge checks itself, on a file that passed the above
        try:
            site = load_site(path)
            board_ids(site)
            config_from_site(site)
        except (ValueError, KeyError, TypeError) as exc:
            c.problems.append(str(exc))
    return site, c.problems


def describe(site):
    """One line about a valid site: kind, storage, PV, grid limits, loads and their priorities."""
    from picogrid.edge.optimizer.mpc_config import config_from_site

    cfg = config_from_site(site)
    kind = KIND_OF_PROFILE.get(site.get("profile"), "?")
    loads = ", ".join(f"{n} {b.get('priority', 'normal')}" for n, b in site["boards"].items()
                      if str(b.get("role", "")).startswith("load"))
    energy = (f"{cfg.e_min_j / J_PER_KWH:.4g}..{cfg.e_max_j / J_PER_KWH:.4g} kWh" if kind == "home"
              else f"{cfg.e_min_j:.4g}..{cfg.e_max_j:.4g} J")
    return (f"a {kind} site: storage {energy}, {cfg.p_ch_max_w:g}/{cfg.p_dis_max_w:g} W charge/discharge; PV "
            f"{float(site['pv']['capability_w']):g} W; grid import {cfg.p_imp_max_w:g} W, export {cfg.p_exp_max_w:g} W; "
            f"loads {loads}; {cfg.horizon} ticks of {cfg.dt_s:g} s ahead, {cfg.n_jobs} job slots")


def main(argv=None):
    """``picogrid site init FILE [flags]`` / ``picogrid site check FILE``; returns the exit status
    (0 ok, 1 problems found, 2 usage)."""
    ap = argparse.ArgumentParser(prog="picogrid site", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="action", required=True)
    p = sub.add_parser("init", help="write a commented site TOML for a new site")
    p.add_argument("file", help="site TOML to write ('-': print it)")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.add_argument("--kind", choices=KINDS, default="home",
                   help="home (default: a battery, kW, 5-min ticks over a day) or bench (the lab bench's scale)")
    p.add_argument("--storage", choices=("battery", "supercap"), help="storage kind (home: battery, bench: supercap)")
    p.add_argument("--storage-kwh", type=float, help="battery capacity [kWh] (home default 10)")
    p.add_argument("--soc-min", type=float, help="lowest state of charge used, 0..1 (default 0.1)")
    p.add_argument("--soc-max", type=float, help="highest state of charge used, 0..1 (default 0.95)")
    p.add_argument("--storage-kw", type=float, help="storage charge/discharge limit [kW] (home 5)")
    p.add_argument("--capacitance-f", type=float, help="supercapacitor [F] (bench 0.5)")
    p.add_argument("--voltage-max-v", type=float, help="supercapacitor's highest voltage [V] (bench 13.5)")
    p.add_argument("--pv-kw", type=float, help="PV power at full sun [kW] (home 6)")
    p.add_argument("--import-max-kw", type=float, help="grid import limit [kW] (home 10)")
    p.add_argument("--export-max-kw", type=float, help="grid export limit [kW] (home 7; 0 = none)")
    p.add_argument("--loads", help="priorities of load1..load3, comma-separated, out of critical, normal, "
                                   "deferrable (default critical,normal,deferrable)")
    p.add_argument("--load-kw", type=float, help="each load's rating [kW] (home 1.5)")
    p.add_argument("--import-price-per-kwh", type=float,
                   help="mean import price [c/kWh] the economics are stated for (home 18.7)")
    p.add_argument("--export-price-per-kwh", type=float, help="export price [c/kWh] (home 4): the terminal value")
    p.add_argument("--tick-s", type=float, help="tick [s] (home 300; must divide the day)")
    p.add_argument("--horizon-h", type=float, help="MPC horizon [h] (home 24)")
    p = sub.add_parser("check", help="validate a site TOML")
    p.add_argument("file")
    args = ap.parse_args(argv)
    if args.action == "check":
        site, problems = check_site(args.file)
        if problems:
            print(f"{args.file}: {len(problems)} problem(s):", file=sys.stderr)
            for msg in problems:
                print(f"  - {msg}", file=sys.stderr)
            return 1
        print(f"{args.file}: OK, {describe(site)}")
        return 0
    spec = SiteSpec(kind=args.kind, **(BENCH if args.kind == "bench" else {}))
    flags = {k: getattr(args, k) for k in ("storage", "storage_kwh", "soc_min", "soc_max", "storage_kw",
                                            "capacitance_f", "voltage_max_v", "pv_kw", "import_max_kw",
                                            "export_max_kw", "load_kw", "import_price_per_kwh",
                                            "export_price_per_kwh", "tick_s", "horizon_h")}
    if args.loads:
        flags["loads"] = tuple(x.strip() for x in args.loads.split(","))
    spec = dataclasses.replace(spec, **{k: v for k, v in flags.items() if v is not None})
    try:
        text = render_site(spec)
    except ValueError as exc:
        ap.error(str(exc))
    if args.file == "-":
        sys.stdout.write(text)
        return 0
    out = pathlib.Path(args.file)
    if out.exists() and not args.force:
        print(f"picogrid site init: {out} exists (--force to overwrite)", file=sys.stderr)
        return 2
    out.write_text(text)
    _, problems = check_site(out)
    if problems:    # a flag combination the edge refuses: say so now, not at the first tick
        print(f"{out}: written, but {len(problems)} problem(s):", file=sys.stderr)
        for msg in problems:
            print(f"  - {msg}", file=sys.stderr)
        return 1
    site, _ = check_site(out)
    print(f"wrote {out}: {describe(site)}\ncheck it any time: picogrid site check {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
