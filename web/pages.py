"""HTML pages: Live, Consumption, Finance, Forecasts, Boards, and the OpenAPI file (``web/openapi.json``).

Each page is complete without JavaScript (tables rendered here); ``static/app.js`` draws the
charts from the JSON API and keeps the page live from ``/api/stream``.
"""

import pathlib
import time

from flask import Blueprint, abort, render_template, request, send_file

from . import queries
from .db import get_db, snapshot

bp = Blueprint("pages", __name__)

OPENAPI = pathlib.Path(__file__).resolve().parent / "openapi.json"
# (endpoint, title) in the order of the navigation bar.
NAV = (("pages.index", "Live"), ("pages.consumption", "Consumption"), ("pages.finance", "Finance"),
       ("pages.forecasts", "Forecasts"), ("pages.boards", "Boards"))


@bp.app_template_filter("num")
def format_number(value):
    """Four significant digits for floats (W on the bench, kW on a site), '—' for missing."""
    if value is None or value == "":
        return "—"
    if isinstance(value, float):
        return "%.4g" % value
    return str(value)


@bp.app_template_filter("watts")
def format_watts(value):
    """Bench power to the centiwatt (fixed width on the Live cards), '—' for missing."""
    # Undefined (a board without telemetry yet) and None both show as missing.
    if not isinstance(value, (int, float)):
        return "—"
    return "%.2f" % (0.0 if abs(value) < 0.005 else value)   # no "-0.00"


@bp.app_template_filter("flags")
def format_flags(value):
    """A board's status flag bits in hex, as the firmware's protocol spec lists them."""
    return "—" if value is None else "0x%02X" % value


@bp.app_template_filter("clock")
def format_clock(unix_s):
    """Local wall-clock time of a unix timestamp [s], for command and audit rows."""
    if unix_s is None:
        return "—"
    return time.strftime("%H:%M:%S", time.localtime(unix_s))


@bp.app_context_processor
def _nav():
    return {"nav": NAV}


def _render(template, **extra):
    """Render ``template`` with the latest run's state, or the waiting page before a run.

    A store that cannot be read raises out of here (``StoreUnavailable``, ``sqlite3``
    errors): the app answers 503 with the reason (``picogrid.web.db``).
    """
    conn = get_db()
    state, control = None, queries.control_state(conn)
    with snapshot(conn):
        state = queries.latest_state(conn) if queries.has_schema(conn) else None
        if state is not None and state["run"] is not None:
            run_id = state["run"]["id"]
            extra = {k: (v(conn, run_id) if callable(v) else v) for k, v in extra.items()}
    if state is None or state["run"] is None:
        return render_template("waiting.html", control=control)
    return render_template(template, state=state, run=state["run"], control=control, **extra)


@bp.route("/")
def index():
    """Live: bus voltage, boards' power and health, the decision in words, operator panel."""
    return _render("index.html", summary=queries.run_summary,
                   commands=lambda conn, _: queries.commands(conn, 10))


@bp.route("/consumption")
def consumption():
    """Per-load energy served vs shed, PV used vs curtailed, storage energy."""
    return _render("consumption.html", cons=queries.consumption)


@bp.route("/finance")
def finance():
    """Cost per tick and cumulative per policy (MPC, naive, perfect foresight, the third bench); import/export; prices."""
    return _render("finance.html", fin=queries.finance, summary=queries.run_summary)


@bp.route("/forecasts")
def forecasts():
    """P10-P90 forecast fan against the actual values, per series."""
    series = request.args.get("series", "pv_available_w")
    if series not in queries.FORECAST_SERIES:
        abort(400, description="unknown series %r" % series)
    return _render("forecasts.html", series=series, all_series=queries.FORECAST_SERIES)


@bp.route("/boards")
def boards():
    """Firmware version, link, last seen, CRC errors, failsafe events; recent events; audit."""
    return _render("boards.html", events=lambda conn, run_id: queries.events(conn, run_id, 50),
                   audit=lambda conn, _: queries.audit_log(conn, 20))


@bp.route("/api/openapi.json")
def openapi():
    """The JSON API's OpenAPI 3 description."""
    return send_file(OPENAPI, mimetype="application/json")
