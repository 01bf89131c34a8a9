"""Operator control: login, CSRF, commands to the running edge, and the audit log.

Viewing needs no login; every control request needs all of:

- a logged-in operator (``[web].users`` of the site file, see :mod:`picogrid.web.site`);
- the session's CSRF token, in the form field ``csrf_token`` or the ``X-CSRF-Token`` header;
- no foreign ``Origin`` (or, without one, ``Referer``): a cross-site POST is refused even
  before the token is looked at. The session cookie is also ``SameSite=Strict``.

A command is only queued here (a ``'pending'`` row of the store's ``command`` table); the edge
takes it at its next tick, bounds it with the optimiser's limits and marks it applied or
rejected. Every login, logout and command is written to the ``audit`` table.

Routes
------
GET  /login, POST /login, POST /logout
GET  /api/control            mode, pending commands, overrides, who is logged in
GET  /api/commands?limit=N   recent commands with their status
GET  /api/audit?limit=N      recent audit rows
POST /api/commands           queue a command (JSON or form); 401/403/400/503 when refused
"""

import functools
import hmac
import json
import logging
import secrets
import time
from urllib.parse import urlsplit

from flask import (Blueprint, abort, current_app, flash, jsonify, redirect, render_template,
                   request, session, url_for)
from werkzeug.security import check_password_hash

from . import queries
from .db import get_db, write_control

log = logging.getLogger(__name__)

bp = Blueprint("control", __name__)

_MAX_LIMIT = 500


def csrf_token():
    """The session's CSRF token (made on first use); templates get it as ``csrf_token()``."""
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


def current_user():
    return session.get("user")


def _same_origin():
    """False when the browser says the request comes from another site."""
    origin = request.headers.get("Origin")
    if origin is None:
        referer = request.headers.get("Referer")
        if referer is None:
            return True   # no browser header to go on (curl, scripts): the token decides
        parts = urlsplit(referer)
        origin = "%s://%s" % (parts.scheme, parts.netloc)
    return origin.rstrip("/") == request.host_url.rstrip("/")


def _check_csrf():
    if not _same_origin():
        _refuse(403, "cross-site request refused")
    sent = request.headers.get("X-CSRF-Token") or request.form.get("csrf_token", "")
    if not sent or "csrf" not in session or not hmac.compare_digest(sent, session["csrf"]):
        _refuse(403, "missing or wrong CSRF token")


def _refuse(code, message):
    log.warning("control request refused (%d): %s from %s", code, message, request.remote_addr)
    abort(code, description=message)


def control_required(view):
    """Refuse (401/403) unless a logged-in operator sent a same-origin, CSRF-checked request."""
    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        _check_csrf()
        if current_user() is None:
            _refuse(401, "log in to control the microgrid")
        return view(*args, **kwargs)
    return wrapped


def _audit(user, action, detail):
    """(sql, args) of one audit row; written with the command in one transaction."""
    return ("INSERT INTO audit (t, user, action, detail, remote_addr) VALUES (?, ?, ?, ?, ?)",
            (time.time(), user, action, json.dumps(detail, sort_keys=True), request.remote_addr))


def _try_audit(user, action, detail):
    try:
        write_control(current_app.config["DATABASE"], [_audit(user, action, detail)])
    except FileNotFoundError:
        log.info("audit %s %s not stored: the edge has not created its store", user, action)


def _wants_json():
    return request.is_json or request.accept_mimetypes.best == "application/json"


@bp.app_context_processor
def _template_globals():
    return {"csrf_token": csrf_token, "current_user": current_user()}


@bp.app_errorhandler(401)
@bp.app_errorhandler(403)
def _denied(error):
    browser_form = request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data")
    if (request.path.startswith("/api/") and not browser_form) or _wants_json():
        return jsonify(error=error.description), error.code
    return render_template("login.html", error=error.description, next=url_for("pages.index")), error.code


@bp.route("/login", methods=["GET", "POST"])
def login():
    nxt = request.values.get("next") or url_for("pages.index")
    if not nxt.startswith("/") or nxt.startswith("//"):
        nxt = url_for("pages.index")   # never redirect off the site
    if request.method == "GET":
        return render_template("login.html", error=None, next=nxt)
    _check_csrf()
    name = request.form.get("username", "").strip()
    password = request.form.get("password", "")
    users = current_app.extensions["picogrid_site"]["users"]
    stored = users.get(name)
    if stored is None or not check_password_hash(stored, password):
        _try_audit(name or "-", "login_failed", {})
        return render_template("login.html", error="unknown user or wrong password", next=nxt), 401
    session.clear()
    session["user"] = name
    csrf_token()   # a fresh token for the new session
    _try_audit(name, "login", {})
    return redirect(nxt, code=303)


@bp.route("/logout", methods=["POST"])
def logout():
    _check_csrf()
    user = current_user()
    session.clear()
    if user:
        _try_audit(user, "logout", {})
    return redirect(url_for("pages.index"), code=303)


def _limit():
    try:
        return max(1, min(_MAX_LIMIT, int(request.args.get("limit", 50))))
    except ValueError:
        abort(400, description="limit must be an integer")


@bp.route("/api/control")
def control_state():
    conn = get_db()
    state = queries.control_state(conn)
    state["user"] = current_user()
    state["limits"] = {b: {"min": lo, "max": hi, "unit": u}
                       for b, (lo, hi, u) in current_app.extensions["picogrid_site"]["limits"].items()}
    return jsonify(state)


@bp.route("/api/commands")
def list_commands():
    conn = get_db()
    return jsonify(commands=[] if conn is None else queries.commands(conn, _limit()))


@bp.route("/api/audit")
def list_audit():
    conn = get_db()
    return jsonify(audit=[] if conn is None else queries.audit_log(conn, _limit()))


@bp.route("/api/commands", methods=["POST"])
@control_required
def create_command():
    """Queue an operator command; JSON in, JSON out (a plain form gets a redirect back)."""
    form = request.get_json(silent=True) if request.is_json else request.form
    if not isinstance(form, dict) and not hasattr(form, "get"):
        abort(400, description="send a JSON object or a form")
    user = current_user()
    from .site import check_command
    try:
        cmd = check_command(form, current_app.extensions["picogrid_site"]["limits"])
    except ValueError as exc:
        _try_audit(user, "command_refused", {"form": {k: str(form.get(k)) for k in
                                                       ("kind", "board", "value", "mode")}, "reason": str(exc)})
        return _answer(400, error=str(exc))
    try:
        cid, _ = write_control(current_app.config["DATABASE"], [
            ("INSERT INTO command (created_at, user, kind, board, value, mode) VALUES (?, ?, ?, ?, ?, ?)",
             (time.time(), user, cmd["kind"], cmd["board"], cmd["value"], cmd["mode"])),
            _audit(user, "command:" + cmd["kind"], cmd),
        ])
    except FileNotFoundError as exc:
        return _answer(503, error=str(exc))
    log.info("operator %s queued command %d: %s", user, cid, cmd)
    return _answer(201, command=dict(cmd, id=cid, status="pending", user=user))


def _answer(code, **body):
    if request.is_json or _wants_json():
        return jsonify(body), code
    flash(body.get("error") or "command %d queued" % body["command"]["id"])
    back = request.referrer if request.referrer and _same_origin() else url_for("pages.index")
    return redirect(back, code=303)
