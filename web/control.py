"""Operator control: login, CSRF, commands to the running edge, and the audit log.

Viewing needs no login; every control request needs all of:

- a logged-in operator (``[web].users`` of the site file, see :mod:`picogrid.web.site`);
- the session's CSRF token, in the form field ``csrf_token`` or the ``X-CSRF-Token`` header;
- no foreign ``Origin`` (or, without one, ``Referer``): a cross-site POST is refused even
  before the token is looked at. The session cookie is also ``SameSite=Strict``.

Login is hardened against guessing (issue 27):

- attempts are rate-limited (Flask-Limiter, in-memory counters: the dashboard is one
  process) per client address (every POST, ``LOGIN_LIMITS_PER_ADDRESS``, default 10/min and
  60/h) and per user name (failed attempts only, ``LOGIN_LIMITS_PER_USER``, default 5/min and
  20/h); a limited attempt gets 429 with ``Retry-After`` [s] and an ``login_rate_limited``
  audit row (at most one a minute per address and name);
- a CSRF token that is not the shape of one (non-ASCII, over-long) is a 400, a wrong one a
  403; the comparison is on bytes and cannot raise;
- every text field has a maximum length (:data:`MAX_LEN`); a longer one is a 400 before the
  store or the password hash is touched, and audit rows hold at most :data:`AUDIT_TEXT_MAX`
  characters of anything a client sent;
- an unknown user name costs one password-hash verification too (against a dummy hash of
  the same method), so the answer's timing does not tell which names exist.

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
import math
import re
import secrets
import sqlite3
import time
from urllib.parse import urlsplit

from flask import (Blueprint, abort, current_app, flash, jsonify, redirect, render_template,
                   request, session, url_for)
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from limits import parse_many
from werkzeug.security import check_password_hash, generate_password_hash

from . import queries
from .db import get_db, unreadable_reason, write_control

log = logging.getLogger(__name__)

bp = Blueprint("control", __name__)

_MAX_LIMIT = 500
#: maximum length of each text field a client sends [characters]; longer is a 400. A user
#: name is a short handle; a password of 256 characters is beyond any passphrase; a CSRF
#: token is 43; command fields are short words or one number.
MAX_LEN = {"username": 64, "password": 256, "csrf_token": 128, "next": 512,
           "kind": 32, "board": 32, "mode": 32, "value": 64}
#: what an audit row keeps of any text a client sent [characters]
AUDIT_TEXT_MAX = 64


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
    if sent and not _CSRF_SHAPE.fullmatch(sent if isinstance(sent, str) else ""):
        # not even the shape of a token (non-ASCII, over-long): a malformed request
        _refuse(400, "malformed CSRF token")
    if not _token_matches(sent, session.get("csrf")):
        _refuse(403, "missing or wrong CSRF token")


#: what ``secrets.token_urlsafe`` makes, up to MAX_LEN["csrf_token"] characters
_CSRF_SHAPE = re.compile(r"[A-Za-z0-9_-]{1,%d}" % MAX_LEN["csrf_token"], re.ASCII)


def _token_matches(sent, expected):
    """Constant-time comparison that cannot raise: False for a missing or non-text token.
    ``hmac.compare_digest`` raises TypeError for non-ASCII ``str``; on UTF-8 bytes it
    compares anything."""
    if not isinstance(sent, str) or not isinstance(expected, str) or not sent:
        return False
    return hmac.compare_digest(sent.encode("utf-8", "surrogatepass"),
                               expected.encode("utf-8", "surrogatepass"))


def clip(text, n=AUDIT_TEXT_MAX):
    """``text`` cut to ``n`` characters (with '…' when cut): what logs and audit rows keep."""
    text = str(text)
    return text if len(text) <= n else text[:n - 1] + "\u2026"


def bounded(value, name):
    """A client's text field checked against :data:`MAX_LEN`; abort 400 when longer.

    Non-text values (JSON numbers) pass unchanged; their own validation judges them.
    """
    if isinstance(value, str) and len(value) > MAX_LEN[name]:
        _refuse(400, "%s longer than %d characters" % (name, MAX_LEN[name]))
    return value


def _refuse(code, message):
    log.warning("control request refused (%d): %s from %s", code, clip(message, 200), request.remote_addr)
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
    """(sql, args) of one audit row; written with the command in one transaction.

    The user name and every text in ``detail`` are cut to :data:`AUDIT_TEXT_MAX` characters
    (:func:`clip`): nothing a client sends goes into the table unbounded.
    """
    return ("INSERT INTO audit (t, user, action, detail, remote_addr) VALUES (?, ?, ?, ?, ?)",
            (time.time(), clip(user), action, json.dumps(_clipped(detail), sort_keys=True),
             request.remote_addr))


def _clipped(obj):
    """``obj`` with every string in it (through dicts and lists) cut by :func:`clip`."""
    if isinstance(obj, str):
        return clip(obj)
    if isinstance(obj, dict):
        return {clip(k): _clipped(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clipped(v) for v in obj]
    return obj


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


def _error_answer(error):
    """JSON for API clients, else the login page with the error, at the error's status."""
    browser_form = request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data")
    if (request.path.startswith("/api/") and not browser_form) or _wants_json():
        return jsonify(error=error.description), error.code
    nxt = url_for("pages.index")
    return render_template("login.html", error=error.description, next=nxt), error.code


@bp.app_errorhandler(401)
@bp.app_errorhandler(403)
def _denied(error):
    return _error_answer(error)


@bp.app_errorhandler(400)
@bp.app_errorhandler(413)
def _bad_request(error):
    """A refused login or command (a field over its maximum length, a body over
    ``MAX_CONTENT_LENGTH``) answered as the login page or JSON; other views keep Flask's page."""
    if error.code == 413:
        error.description = "request body larger than %d bytes" % current_app.config["MAX_CONTENT_LENGTH"]
    if request.blueprint != bp.name and error.code != 413:
        return error
    return _error_answer(error)


@bp.app_errorhandler(429)
def _rate_limited(error):
    """A login attempt over a limit: 429, ``Retry-After`` [s], one audit row per minute per
    address and name (a flood of refused attempts must not flood the table)."""
    limiter = current_app.extensions["picogrid_limiter"]
    breached = limiter.current_limit
    now = time.time()
    retry_s = max(1, math.ceil(breached.reset_at - now)) if breached is not None else 60
    name = clip(request.form.get("username", "").strip())
    if limiter.limiter.hit(_AUDIT_ONCE, "audit-429", request.remote_addr or "-", name):
        try:
            _try_audit(name or "-", "login_rate_limited",
                       {"limit": str(breached.limit) if breached is not None else "?", "retry_after_s": retry_s})
        except sqlite3.DatabaseError as exc:
            # the refusal stands; an error raised inside an error handler would be a 500
            if unreadable_reason(exc) is None:
                raise
            log.warning("login_rate_limited for %r from %s not audited: %s", name, request.remote_addr, exc)
    error.description = ("too many login attempts for this user or from this address; "
                         "try again in %d s" % retry_s)
    response = current_app.make_response(_error_answer(error))
    response.headers["Retry-After"] = str(retry_s)
    return response


@bp.route("/login", methods=["GET", "POST"])
def login():
    """GET: the login form. POST: check the operator's name and password.

    Refusals: 403 without the CSRF token, with a wrong one or cross-site; 400 for a field
    over :data:`MAX_LEN` or a malformed CSRF token; 401 for an unknown name or a wrong password (both after one hash
    verification); 429 over the rate limits (:func:`init_limiter`).
    """
    nxt = request.values.get("next") or url_for("pages.index")
    if len(nxt) > MAX_LEN["next"] or not nxt.startswith("/") or nxt.startswith("//"):
        nxt = url_for("pages.index")   # never redirect off the site
    if request.method == "GET":
        return render_template("login.html", error=None, next=nxt)
    _check_csrf()
    # bounded before anything else: a 400 kB name must reach neither the hash nor the store
    name = bounded(request.form.get("username", ""), "username").strip()
    password = bounded(request.form.get("password", ""), "password")
    users = current_app.extensions["picogrid_site"]["users"]
    stored = users.get(name)
    # an unknown name is checked against a dummy hash: the same work as a known one
    ok = check_password_hash(stored if stored is not None else _dummy_hash(users), password)
    if stored is None or not ok:
        _try_audit(name or "-", "login_failed", {})
        return render_template("login.html", error="unknown user or wrong password", next=nxt), 401
    _try_audit(name, "login", {})   # before the session: no login that the audit did not see
    session.clear()
    session["user"] = name
    csrf_token()   # a fresh token for the new session
    return redirect(nxt, code=303)


def _dummy_hash(users):
    """A hash of a random password with the method and cost of the site's own hashes (the
    first user's; werkzeug's default without users), made once per app."""
    cached = current_app.extensions.get("picogrid_dummy_hash")
    if cached is None:
        method = next(iter(users.values())).split("$", 1)[0] if users else "scrypt"
        cached = generate_password_hash(secrets.token_urlsafe(16), method=method)
        current_app.extensions["picogrid_dummy_hash"] = cached
    return cached


#: at most one audit row per minute for the refused attempts of one address and name
_AUDIT_ONCE = parse_many("1 per minute")[0]


def _login_failed(response):
    return response.status_code == 401


def _username_key():
    # The form's user name, cut to its maximum (a longer one is a 400 anyway); prefixed so
    # that a name never shares a counter with an address.
    name = request.form.get("username", "").strip()[:MAX_LEN["username"]]
    return "user:" + name


def init_limiter(app):
    """Rate-limit login attempts of ``app`` (Flask-Limiter, in-memory storage).

    Per client address, every POST /login counts (``LOGIN_LIMITS_PER_ADDRESS``): one host
    cannot try many names. Per user name, only failed attempts count
    (``LOGIN_LIMITS_PER_USER``): many hosts cannot try many passwords for one name, and an
    operator who mistypes once is not slowed. The counters live in this process's memory (the
    dashboard is one process; they start empty when it restarts). Behind a reverse proxy,
    the client address is the proxy's unless werkzeug's ``ProxyFix`` is configured.

    The limiter is made per app (not a module global) so that apps never share counters; it is
    ``app.extensions["picogrid_limiter"]`` (tests call its ``reset()``).
    """
    limiter = Limiter(key_func=get_remote_address, app=app, storage_uri="memory://",
                      strategy="moving-window")
    app.extensions["picogrid_limiter"] = limiter
    view = app.view_functions["control.login"]
    view = limiter.limit(app.config["LOGIN_LIMITS_PER_ADDRESS"], methods=["POST"])(view)
    view = limiter.limit(app.config["LOGIN_LIMITS_PER_USER"], methods=["POST"], key_func=_username_key,
                         deduct_when=_login_failed)(view)
    app.view_functions["control.login"] = view
    return limiter


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
    fields = ("kind", "board", "value", "mode")
    for name in fields:
        bounded(form.get(name), name)   # an over-long field is a 400, not an audit row
    user = current_user()
    from .site import check_command
    try:
        cmd = check_command(form, current_app.extensions["picogrid_site"]["limits"])
    except ValueError as exc:
        _try_audit(user, "command_refused", {"form": {k: str(form.get(k)) for k in fields},
                                             "reason": str(exc)})
        return _answer(400, error=clip(str(exc), 200))
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
