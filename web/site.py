"""The dashboard's view of the site file: operator accounts and the limits commands must respect.

The site TOML the edge runs with (``edge/sites/lab.toml`` layout) gains one table for the web::

    [web]
    users = { alice = "scrypt:32768:8:1$..." }   # werkzeug password hashes, never plain text
    secret_key = "..."                           # optional; signs session cookies

Its path comes from the app config key ``SITE_CONFIG`` or the environment variable
``PICOGRID_SITE``. Password hashes must never be committed: keep the operator's copy of the
site file outside git (``var/`` and ``secrets/`` are ignored) and make a hash with
``flask --app picogrid.web hash-password NAME``. Without a site file, or with no users in it,
the dashboard is view-only: every control request is refused.
"""

import logging
import math
import os
import pathlib
import tomllib

log = logging.getLogger(__name__)

MODES = ("automatic", "approve", "manual")
COMMAND_KINDS = ("mode", "override", "clear_override", "shed", "restore", "approve")
LOADS = ("load1", "load2", "load3")
BOARDS = ("pv", "storage", "grid") + LOADS
# The lab bench's settings for what the site file does not say. The limits are the edge's own
# (picogrid.edge.control.operator.setpoint_bounds); checking here only gives the operator an early answer.
_DEFAULT_SITE = pathlib.Path(__file__).resolve().parent.parent / "edge" / "sites" / "lab.toml"


class SiteConfigError(ValueError):
    """The site file cannot be read or its [web] table is malformed."""


def load(path):
    """Read the site TOML at ``path`` (None: no file) -> dict with ``users``, ``secret_key``, ``limits``.

    Returns
    -------
    dict
        ``users``: {name: werkzeug hash}; ``secret_key``: str or None; ``limits``:
        {board: (low, high, unit)} the range an override of that board may ask for.

    Raises
    ------
    SiteConfigError
        When the file is missing or unreadable, or ``[web].users`` is not a table of strings.
    """
    site = {}
    if path:
        try:
            with open(path, "rb") as f:
                site = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SiteConfigError("cannot read the site file %s: %s" % (path, exc)) from exc
    web = site.get("web", {})
    users = web.get("users", {})
    if not isinstance(users, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v for k, v in users.items()):
        raise SiteConfigError("[web].users in %s must map user names to password hashes" % path)
    for name, value in users.items():
        if ":" not in value:   # werkzeug hashes are 'method:params$salt$hash'
            raise SiteConfigError("[web].users.%s in %s is not a password hash (use "
                                  "'flask --app picogrid.web hash-password %s')" % (name, path, name))
    # Tables the file does not give come from the lab bench; a table it gives overrides
    # the lab's keys one by one.
    with open(_DEFAULT_SITE, "rb") as f:
        merged = tomllib.load(f)
    for key, value in site.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    site = merged
    return {"users": dict(users), "secret_key": web.get("secret_key"), "limits": _limits(site)}


def _limits(site):
    # One source of truth: the edge bounds the same commands with this function.
    from picogrid.edge.control.operator import setpoint_bounds
    units = {"grid": "V"}
    return {board: (float(lo), float(hi), units.get(board, "W"))
            for board, (lo, hi) in setpoint_bounds(site).items()}


def _text(form, name):
    """Field ``name`` of a command as text ('' when absent); a JSON number or list there is
    refused with a ValueError (a 400 and an audit row, not a server error)."""
    value = form.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError("%s must be text, got %r" % (name, value))
    return value.strip()


def check_command(form, limits):
    """Validate an operator command before it is queued for the edge.

    Parameters
    ----------
    form : mapping
        ``kind`` and, as the kind needs, ``board``, ``value`` (override [W], grid [V];
        approve: the decision tick), ``mode``.
    limits : dict, as ``load(...)["limits"]``

    Returns
    -------
    dict
        ``{"kind", "board", "value", "mode"}`` with None for what the kind does not use.

    Raises
    ------
    ValueError
        With a message fit for the operator, for an unknown kind, board or mode, a missing,
        non-finite or out-of-limits value.
    """
    kind = _text(form, "kind")
    if kind not in COMMAND_KINDS:
        raise ValueError("unknown command %r; expected one of %s" % (kind, ", ".join(COMMAND_KINDS)))
    out = {"kind": kind, "board": None, "value": None, "mode": None}
    if kind == "mode":
        mode = _text(form, "mode")
        if mode not in MODES:
            raise ValueError("unknown mode %r; expected one of %s" % (mode, ", ".join(MODES)))
        out["mode"] = mode
        return out
    if kind == "approve":
        out["value"] = float(_integer(form.get("value"), "the tick of the plan to approve"))
        return out
    board = _text(form, "board")
    allowed = LOADS if kind in ("shed", "restore") else BOARDS
    if board not in allowed:
        raise ValueError("%s needs a board among %s, got %r" % (kind, ", ".join(allowed), board))
    out["board"] = board
    if kind == "override":
        value = _number(form.get("value"), "an override value")
        low, high, unit = limits[board]
        if not low <= value <= high:
            raise ValueError("%s override %g %s is outside its limits %g..%g %s"
                             % (board, value, unit, low, high, unit))
        out["value"] = value
    return out


def _number(text, what):
    if text is None or (isinstance(text, str) and not text.strip()):
        raise ValueError("%s is required" % what)
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ValueError("%s must be a number, got %r" % (what, text)) from None
    if not math.isfinite(value):
        raise ValueError("%s must be finite, got %r" % (what, text))
    return value


def _integer(text, what):
    value = _number(text, what)
    if value != int(value) or value < 0:
        raise ValueError("%s must be a whole number >= 0, got %r" % (what, text))
    return int(value)


def site_path(config):
    """The site file path from the app config or ``PICOGRID_SITE`` (None when neither is set)."""
    return config.get("SITE_CONFIG") or os.environ.get("PICOGRID_SITE") or None
