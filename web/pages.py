"""HTML pages: the Live + Day view of the latest run."""

from flask import Blueprint, render_template

from . import queries
from .db import get_db, snapshot

bp = Blueprint("pages", __name__)


@bp.app_template_filter("num")
def format_number(value):
    """Four significant digits for floats (W on the bench, kW on a site), '—' for missing."""
    if value is None or value == "":
        return "—"
    if isinstance(value, float):
        return "%.4g" % value
    return str(value)


@bp.app_template_filter("flags")
def format_flags(value):
    """A board's status flag bits in hex, as the firmware's protocol spec lists them."""
    return "—" if value is None else "0x%02X" % value


@bp.route("/")
def index():
    """Live + Day: run header, bus, boards, last decision, dispatch charts, costs, summary.

    The page is complete without JavaScript; ``static/app.js`` then keeps it live from
    ``/api/stream``. Before the edge has written a run it says so instead.
    """
    conn = get_db()
    state, summary = None, None
    if conn is not None:
        with snapshot(conn):
            state = queries.latest_state(conn)
            if state["run"] is not None:
                summary = queries.run_summary(conn, state["run"]["id"])
    if state is None or state["run"] is None:
        return render_template("waiting.html")
    return render_template("index.html", state=state, summary=summary)
