"""PicoGrid dashboard: a Flask app over the edge's SQLite store (after Flask's tutorial app).

``create_app()`` builds the app; ``picogrid.web.server.start_background`` serves it from a
thread for the edge's demo. Viewing reads the store only (``picogrid.web.db``); logged-in
operators queue commands for the edge (``picogrid.web.control``).

Operator accounts live in the site file (``SITE_CONFIG`` or ``PICOGRID_SITE``, see
``picogrid.web.site``); make a password hash with::

    flask --app picogrid.web hash-password alice
"""

import logging
import math
import os
import secrets
import threading

import click
from flask import Flask
from flask.json.provider import DefaultJSONProvider

log = logging.getLogger(__name__)

DEFAULTS = {
    # The edge's store; the PICOGRID_DB environment variable or test_config override it.
    "DATABASE": os.path.join("var", "picogrid.sqlite"),
    # The site TOML with the [web] users table; PICOGRID_SITE overrides. None: view-only.
    "SITE_CONFIG": None,
    "SSE_POLL_S": 0.5,         # how often the stream looks for a new tick [s]
    "SSE_KEEPALIVE_S": 10.0,   # comment sent after this much silence, to notice gone clients [s]
    "SSE_MAX_S": 600.0,        # a stream ends after this [s]; EventSource reconnects by itself
    # Session cookie: never sent on cross-site requests, not readable by scripts.
    "SESSION_COOKIE_SAMESITE": "Strict",
    "SESSION_COOKIE_HTTPONLY": True,
    "PERMANENT_SESSION_LIFETIME": 8 * 3600,   # one lab session [s]
    # The largest body the dashboard takes is a login form or one command (< 2 kB); anything
    # bigger is refused with 413 before a view reads it [bytes].
    "MAX_CONTENT_LENGTH": 16 * 1024,
    "STORE_TIMEOUT_S": 5.0,    # a read waits this long for the edge's write lock, then 503 [s]
    # Login attempts (picogrid.web.control): per client address, every POST counts; per user
    # name, only failed ones. In-memory counters: the dashboard is one process.
    "LOGIN_LIMITS_PER_ADDRESS": "10 per minute;60 per hour",
    "LOGIN_LIMITS_PER_USER": "5 per minute;20 per hour",
}


def finite(obj):
    """``obj`` with every non-finite float (NaN, inf) replaced by None, through dicts, lists
    and tuples: JSON has no NaN, and a browser's ``response.json()`` rejects the whole reply
    for one (a summary stores an unknown cost as NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


class FiniteJSONProvider(DefaultJSONProvider):
    """Flask's JSON with non-finite floats sent as null (:func:`finite`)."""

    def dumps(self, obj, **kwargs):
        return super().dumps(finite(obj), **kwargs)


def create_app(test_config=None):
    """Create the dashboard app.

    Parameters
    ----------
    test_config : dict, optional
        Overrides of ``DEFAULTS`` (at least ``DATABASE``: path of the edge's SQLite file,
        which need not exist yet; ``SITE_CONFIG``: the site TOML with operator accounts).

    Returns
    -------
    flask.Flask
        With blueprints ``pages`` (HTML), ``api`` (JSON under ``/api``) and ``control``
        (login, commands, audit).

    Raises
    ------
    picogrid.web.site.SiteConfigError
        When the site file is given but cannot be read or its ``[web]`` table is malformed.
    """
    from . import api, control, db, pages, site, stream

    app = Flask(__name__)
    app.json = FiniteJSONProvider(app)
    app.config.from_mapping(DEFAULTS)
    if "PICOGRID_DB" in os.environ:
        app.config["DATABASE"] = os.environ["PICOGRID_DB"]
    if test_config is not None:
        app.config.from_mapping(test_config)
    site_info = site.load(site.site_path(app.config))
    app.extensions["picogrid_site"] = site_info
    if not app.config.get("SECRET_KEY"):
        # A key per process: sessions end when the dashboard restarts, which is acceptable.
        app.config["SECRET_KEY"] = site_info["secret_key"] or secrets.token_hex(32)
    if not site_info["users"]:
        log.info("no operator accounts in the site file: the dashboard is view-only")
    # Set by server.start_background's stop(): open SSE streams end at their next poll.
    app.extensions["picogrid_stop"] = threading.Event()
    app.extensions["picogrid_hub"] = stream.Hub(app.config["DATABASE"], app.config["SSE_POLL_S"],
                                                app.extensions["picogrid_stop"])

    db.init_app(app)
    app.register_blueprint(pages.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(control.bp)
    control.init_limiter(app)
    app.cli.add_command(hash_password)
    return app


@click.command("hash-password")
@click.argument("username")
@click.password_option()
def hash_password(username, password):
    """Print a [web] users line with a password hash for USERNAME (paste it into the site file)."""
    import json
    import re

    from werkzeug.security import generate_password_hash
    # A bare TOML key when it can be, else a quoted one (JSON string syntax is valid TOML).
    key = username if re.fullmatch(r"[A-Za-z0-9_-]+", username) else json.dumps(username)
    click.echo("[web]\nusers = { %s = \"%s\" }" % (key, generate_password_hash(password)))
