"""PicoGrid dashboard: a Flask app over the edge's SQLite store (after Flask's tutorial app).

``create_app()`` builds the app; ``picogrid.web.server.start_background`` serves it from a
thread for the edge's demo. The app only reads the store (see ``picogrid.web.db``).
"""

import os
import threading

from flask import Flask

DEFAULTS = {
    # The edge's store; the PICOGRID_DB environment variable or test_config override it.
    "DATABASE": os.path.join("var", "picogrid.sqlite"),
    "SSE_POLL_S": 0.5,         # how often the stream looks for a new tick [s]
    "SSE_KEEPALIVE_S": 10.0,   # comment sent after this much silence, to notice gone clients [s]
    "SSE_MAX_S": 600.0,        # a stream ends after this [s]; EventSource reconnects by itself
}


def create_app(test_config=None):
    """Create the dashboard app.

    Parameters
    ----------
    test_config : dict, optional
        Overrides of ``DEFAULTS`` (at least ``DATABASE``: path of the edge's SQLite file,
        which need not exist yet).

    Returns
    -------
    flask.Flask
        With blueprints ``pages`` (HTML at ``/``) and ``api`` (JSON under ``/api``).
    """
    app = Flask(__name__)
    app.config.from_mapping(DEFAULTS)
    if "PICOGRID_DB" in os.environ:
        app.config["DATABASE"] = os.environ["PICOGRID_DB"]
    if test_config is not None:
        app.config.from_mapping(test_config)
    # Set by server.start_background's stop(): open SSE streams end at their next poll.
    app.extensions["picogrid_stop"] = threading.Event()

    from . import api, db, pages

    db.init_app(app)
    app.register_blueprint(pages.bp)
    app.register_blueprint(api.bp)
    return app
