"""Read-only access to the edge's SQLite store, one handle per request (after Flask's tutorial).

The edge (``picogrid.edge.store``) owns the file and its schema; the dashboard only reads.
Opening with ``mode=ro`` makes that a guarantee rather than a habit, and WAL mode on the
writer's side lets us read while a tick is being written. The one exception is the operator's
``command`` and ``audit`` rows: :func:`write_control` opens a separate read-write connection
for them alone, for one short transaction.
"""

import contextlib
import logging
import os
import sqlite3

from flask import current_app, g

log = logging.getLogger(__name__)


def open_readonly(path):
    """Open the store at ``path`` read-only.

    Parameters
    ----------
    path : str or os.PathLike
        The edge's SQLite file.

    Returns
    -------
    sqlite3.Connection or None
        A connection with ``sqlite3.Row`` rows, or None when the file does not exist yet
        (the edge has not started): the caller shows "waiting for the edge".
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        return None
    # check_same_thread=False: the SSE generator may be resumed on another server thread.
    conn = sqlite3.connect(
        "file:%s?mode=ro" % _uri_path(path), uri=True, timeout=5.0, check_same_thread=False
    )
    conn.row_factory = sqlite3.Row
    return conn


def write_control(path, statements):
    """Run INSERT/UPDATE statements on the ``command``/``audit`` tables in one transaction.

    Parameters
    ----------
    path : str or os.PathLike
        The edge's store; it must exist and hold those tables (the edge creates them).
    statements : list of (str, tuple)
        SQL and parameters; each must write ``command`` or ``audit`` only.

    Returns
    -------
    list
        ``lastrowid`` of each statement.

    Raises
    ------
    FileNotFoundError
        When the edge has not created the store (or its control tables) yet.
    ValueError
        For a statement that would touch another table.
    """
    for sql, _ in statements:
        words = sql.split()
        target = words[2] if words[:2] == ["INSERT", "INTO"] else words[1] if words[:1] == ["UPDATE"] else None
        if target not in ("command", "audit"):
            raise ValueError("the dashboard writes only command/audit rows, not: %.60s" % sql)
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError("the edge has not created its store %s yet" % path)
    # mode=rw: never create the file; the edge owns it and its schema.
    conn = sqlite3.connect("file:%s?mode=rw" % _uri_path(path), uri=True, timeout=5.0)
    try:
        have = {r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name IN ('command', 'audit')")}
        if have != {"command", "audit"}:
            raise FileNotFoundError("the store %s has no command/audit tables yet" % path)
        with conn:
            return [conn.execute(sql, args).lastrowid for sql, args in statements]
    finally:
        conn.close()


def _uri_path(path):
    # '?' and '#' would end the path part of a file: URI; '%' must not be read as an escape.
    return os.path.abspath(path).replace("%", "%25").replace("?", "%3f").replace("#", "%23")


@contextlib.contextmanager
def snapshot(conn):
    """Run several SELECTs in one read transaction, so they all see the same committed ticks."""
    conn.execute("BEGIN")
    try:
        yield conn
    finally:
        conn.rollback()


def get_db():
    """The request's read-only handle (on ``g``), or None while the store file does not exist."""
    if "db" not in g:
        g.db = open_readonly(current_app.config["DATABASE"])
    return g.db


def close_db(exc=None):
    db = g.pop("db", None)
    if db is not None:
        db.close()


def init_app(app):
    app.teardown_appcontext(close_db)
