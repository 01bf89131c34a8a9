"""Serve the dashboard from a background thread, for the edge's demo and for tests."""

import logging
import threading

from werkzeug.serving import WSGIRequestHandler, make_server

from . import create_app

log = logging.getLogger(__name__)


class _QuietRequestHandler(WSGIRequestHandler):
    """Request lines at DEBUG: the page fetches on every tick, INFO would flood the demo's console."""

    def log_request(self, code="-", size="-"):
        log.debug('%s "%s" %s %s', self.address_string(), self.requestline, code, size)


def start_background(db_path, host="127.0.0.1", port=0, site_config=None):
    """Serve the dashboard over ``db_path`` in a daemon thread.

    Parameters
    ----------
    db_path : str or os.PathLike
        The edge's SQLite store (it need not exist yet).
    host : str
        Interface to bind; loopback by default (viewing needs no login, and plain HTTP
        would carry operator passwords in clear on a network: put TLS in front for that).
    port : int
        TCP port; 0 lets the OS pick a free one.
    site_config : str or os.PathLike, optional
        Site TOML with the operators' ``[web].users`` (default: ``PICOGRID_SITE``, else
        view-only).

    Returns
    -------
    (str, callable)
        The real URL, e.g. ``'http://127.0.0.1:54321/'``, and ``stop()``, which ends open
        SSE streams, shuts the server down and joins its thread (idempotent).

    Raises
    ------
    OSError
        When the address cannot be bound (port in use, unknown host).
    """
    config = {"DATABASE": str(db_path)}
    if site_config is not None:
        config["SITE_CONFIG"] = str(site_config)
    app = create_app(config)
    server = make_server(host, port, app, threaded=True, request_handler=_QuietRequestHandler)
    url = "http://%s:%d/" % (_url_host(host), server.server_port)
    thread = threading.Thread(target=server.serve_forever, name="picogrid-web", daemon=True)
    thread.start()
    log.info("dashboard at %s (store %s)", url, db_path)
    lock = threading.Lock()
    stopped = []

    def stop():
        with lock:
            if stopped:
                return
            stopped.append(True)
        app.extensions["picogrid_stop"].set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5.0)
        log.info("dashboard at %s stopped", url)

    return url, stop


def _url_host(host):
    if ":" in host:  # IPv6 literal
        return "[%s]" % host
    return host
