"""JSON API under /api and the Server-Sent Events stream the page keeps itself live with.

Routes
------
GET /api/runs                          headers of all runs, newest first
GET /api/latest                        latest run's header, bus voltage, boards, last decision
GET /api/run/<id>/dispatch?policy=mpc  one policy's dispatch as columns (W, J, price/J)
GET /api/run/<id>/summary              end-of-day summary with units, cost per policy
GET /api/run/<id>/consumption          loads served vs shed, PV used vs curtailed, storage [J]
GET /api/run/<id>/finance              cost per tick and cumulative per policy, import/export, prices
GET /api/run/<id>/forecast?series=&tick=&step=   P10/P50/P90 against the actual values
GET /api/run/<id>/boards               boards with health, and the run's recent events
GET /api/stream                        SSE: an event ``tick`` whenever something new is stored
"""

import json
import logging
import time

from flask import Blueprint, Response, abort, current_app, jsonify, request

from . import finite, queries
from .db import get_db, snapshot

log = logging.getLogger(__name__)

bp = Blueprint("api", __name__, url_prefix="/api")


def _conn_or_none():
    """The request's store handle, or None before the edge has created its tables.

    Raises ``StoreUnavailable`` (a 503) when the store is missing or cannot be read.
    """
    conn = get_db()
    return conn if queries.has_schema(conn) else None


@bp.errorhandler(400)
@bp.errorhandler(404)
@bp.errorhandler(503)
def _json_error(error):
    return jsonify(error=error.description), error.code


@bp.route("/runs")
def runs():
    conn = _conn_or_none()
    return jsonify(runs=[] if conn is None else queries.list_runs(conn))


@bp.route("/latest")
def latest():
    conn = _conn_or_none()
    if conn is None:
        return jsonify(run=None, bus_voltage_v=None, boards=[], decision=None)
    with snapshot(conn):
        return jsonify(queries.latest_state(conn))


def _known_run(conn, run_id):
    if conn is None or queries.run_header(conn, run_id) is None:
        abort(404, description="no run %d in the store" % run_id)


def _policy_arg():
    """The ``policy`` query argument (default the live policy); 400 if unknown."""
    policy = request.args.get("policy", queries.LIVE_POLICY)
    try:
        queries.check_policy(policy)
    except ValueError as exc:
        abort(400, description=str(exc))
    return policy


@bp.route("/run/<int:run_id>/dispatch")
def dispatch(run_id):
    policy = _policy_arg()
    conn = _conn_or_none()
    _known_run(conn, run_id)
    return jsonify(run_id=run_id, policy=policy, **queries.dispatch_series(conn, run_id, policy))


@bp.route("/run/<int:run_id>/summary")
def summary(run_id):
    conn = _conn_or_none()
    _known_run(conn, run_id)
    with snapshot(conn):
        return jsonify(queries.run_summary(conn, run_id))


@bp.route("/run/<int:run_id>/consumption")
def consumption(run_id):
    policy = _policy_arg()
    conn = _conn_or_none()
    _known_run(conn, run_id)
    with snapshot(conn):
        return jsonify(run_id=run_id, policy=policy, **queries.consumption(conn, run_id, policy))


@bp.route("/run/<int:run_id>/finance")
def finance(run_id):
    conn = _conn_or_none()
    _known_run(conn, run_id)
    with snapshot(conn):
        return jsonify(run_id=run_id, **queries.finance(conn, run_id))


@bp.route("/run/<int:run_id>/forecast")
def forecast(run_id):
    series = request.args.get("series", "pv_available_w")
    try:
        tick = request.args.get("tick")
        tick = None if tick is None else int(tick)     # ?tick=abc: a 400, not the latest forecast
        step = int(request.args.get("step", 1))
        conn = _conn_or_none()
        _known_run(conn, run_id)
        with snapshot(conn):
            return jsonify(run_id=run_id, **queries.forecast_fan(conn, run_id, series, tick, step))
    except ValueError as exc:
        abort(400, description=str(exc))


@bp.route("/run/<int:run_id>/boards")
def boards(run_id):
    conn = _conn_or_none()
    _known_run(conn, run_id)
    with snapshot(conn):
        state = queries.latest_state(conn, run_id)
        return jsonify(run_id=run_id, boards=state["boards"], events=queries.events(conn, run_id))


def parse_since(text):
    """Parse an SSE event id ``'<run_id>:<tick>'`` (tick may be empty) -> (run_id, tick).

    Returns (None, None) for an empty or malformed id: the client then gets everything.
    """
    if not text:
        return None, None
    run_part, _, tick_part = text.partition(":")
    try:
        return int(run_part), (int(tick_part) if tick_part else None)
    except ValueError:
        return None, None


def _sse(event, data, event_id):
    return "id: %s\nevent: %s\ndata: %s\n\n" % (event_id, event, json.dumps(finite(data), separators=(",", ":"),
                                                                          allow_nan=False))


@bp.route("/stream")
def stream():
    """SSE stream: an event ``tick`` each time a new tick, decision, status, summary or command is stored.

    Event data: ``{"latest": <as /api/latest>, "reset": bool, "dispatch": <columns of the
    'mpc' ticks the client has not seen>}``; ``reset`` means a different run, so the client
    replaces rather than appends. The event id ``'<run_id>:<tick>'`` is what EventSource sends
    back as Last-Event-ID when it reconnects; ``?since=`` does the same for a first connect.
    The first event describes the current state (or that the edge has not started). All
    viewers share one poller of the store (``picogrid.web.stream.Hub``).
    """
    since = request.headers.get("Last-Event-ID") or request.args.get("since", "")
    known_run, known_tick = parse_since(since)
    config = current_app.config
    return Response(
        _events(current_app.extensions["picogrid_hub"], known_run, known_tick,
                config["SSE_KEEPALIVE_S"], config["SSE_MAX_S"], current_app.extensions["picogrid_stop"]),
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _events(hub, known_run, known_tick, keepalive_s, max_s, stop):
    """Generator behind /api/stream: one event per change the hub sees.

    Bounded three ways: the server closes it when a write to a gone client fails (the
    keep-alive comment guarantees a write every ``keepalive_s``), it ends after ``max_s``,
    and it ends when the app's stop event is set.
    """
    started = last_write = time.monotonic()
    seen = -1          # no version yet: the first event goes out at once
    try:
        yield "retry: 2000\n\n"
        while not stop.is_set():
            now = time.monotonic()
            left_s = max_s - (now - started)
            if left_s <= 0:
                break
            version = hub.wait(seen, max(0.0, min(keepalive_s - (now - last_write), left_s)))
            now = time.monotonic()
            if version != seen and not stop.is_set():
                seen = version
                event = hub.event(version, known_run, known_tick)
                run = event["latest"]["run"]
                known_run = run["id"] if run else None
                known_tick = run["latest_tick"] if run else None
                last_write = now
                yield _sse("tick", event, "" if run is None else "%s:%s" % (
                    known_run, "" if known_tick is None else known_tick))
            elif now - last_write >= keepalive_s:
                last_write = now
                yield ": keep-alive\n\n"
    finally:
        log.debug("SSE stream closed")
