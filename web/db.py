"""Read-only access to the edge's SQLite store, one handle per request (after Flask's tutorial).

The edge (``picogrid.edge.control.store``) owns the file and its schema; the dashboard only reads.
Opening with ``mode=ro`` makes that a guarantee rather than a habit, and WAL mode on the
writer's side lets us read while a tick is being written. The one exception is the operator's
``command`` and ``audit`` rows: :func:`write_control` opens a separate read-write connection
for them alone, for one short transaction.

A store that cannot be read (missing, garbage over it, locked past the timeout, another
program's tables) raises :class:`StoreUnavailable` or ``sqlite3.DatabaseError`` out of a view;
the app turns both into a 503 that says why (``picogrid.web.create_app``), never a 500.
"""

import contextlib
import logging
import os
import sqlite3

from flask import current_app, g, jsonify, render_template, request

log = logging.getLogger(__name__)

#: what SQLite answers for an unreadable store (the other DatabaseErrors are the web's own bugs)
UNREADABLE = (sqlite3.OperationalError, sqlite3.DatabaseError)
_BUGS = (sqlite3.ProgrammingError, sqlite3.IntegrityError)


class StoreUnavailable(Exception):
    """The edge's store cannot be read; ``str()`` says why, in words fit for a viewer."""


class StoreMissing(StoreUnavailable):
    """The store file does not exist: the edge has not started (or its folder was removed)."""


def unreadable_reason(exc):
    """Why the store cannot be read, from an exception a read raised; None for a web bug.

    Parameters
    ----------
    exc : BaseException

    Returns
    -------
    str or None
        E.g. ``'file is not a database'``, ``'database is locked'``, ``'no such column: x'``
        (a schema the dashboard does not know); None for errors that are not the store's fault
        (``ProgrammingError``, ``IntegrityError``, anything not from SQLite).
    """
    if isinstance(exc, StoreUnavailable):
        return str(exc)
    if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, _BUGS):
        return str(exc) or type(exc).__name__
    return None


def open_readonly(path, timeout_s=5.0):
    """Open the store at ``path`` read-only.

    Parameters
    ----------
    path : str or os.PathLike
        The edge's SQLite file.
    timeout_s : float
        How long a read waits for a writer's lock before ``database is locked`` [s].

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
        "file:%s?mode=ro" % _uri_path(path), uri=True, timeout=timeout_s, check_same_thread=False
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


def check_readable(conn, known_columns):
    """Read the store's tables and columns; raise :class:`StoreUnavailable` when it is not
    the edge's schema.

    Parameters
    ----------
    conn : sqlite3.Connection
    known_columns : mapping of str to set of str
        The edge schema's tables and their columns (``picogrid.web.queries.EDGE_COLUMNS``).

    Raises
    ------
    StoreUnavailable
        When the file is not SQLite (garbage over it), is malformed, locked past the timeout or
        cannot be opened; when it holds tables of which none is the edge's (another program's
        file), or an edge table lacks columns of the edge's schema (an older or foreign
        schema). A file with no tables, or only some of the edge's, is readable: the edge is
        creating its schema.
    """
    try:
        # one query for every table's columns (a page of the dashboard reads many tables)
        found = {}
        for table, column in conn.execute(
                "SELECT m.name, p.name FROM sqlite_master AS m, pragma_table_info(m.name) AS p"
                " WHERE m.type = 'table'"):
            found.setdefault(table, set()).add(column)
    except sqlite3.DatabaseError as exc:
        reason = unreadable_reason(exc)
        if reason is None:
            raise
        raise StoreUnavailable(reason) from exc
    if found and not found.keys() & known_columns.keys():
        raise StoreUnavailable("a schema the dashboard does not know (tables: %s)"
                               % ", ".join(sorted(found)[:8]))
    lacking = ["%s.%s" % (t, c) for t in sorted(found.keys() & known_columns.keys())
               for c in sorted(known_columns[t] - found[t])]
    if lacking:
        shown = ", ".join(lacking[:6]) + (", ..." if len(lacking) > 6 else "")
        raise StoreUnavailable("a schema the dashboard does not know (no column %s)" % shown)


def get_db():
    """The request's read-only handle (on ``g``), checked readable.

    Raises
    ------
    StoreUnavailable
        When the file does not exist (the edge has not started) or cannot be read
        (:func:`check_readable`); the app answers 503.
    """
    if "db" not in g:
        from .queries import EDGE_COLUMNS
        path = current_app.config["DATABASE"]
        conn = open_readonly(path, current_app.config["STORE_TIMEOUT_S"])
        if conn is None:
            raise StoreMissing("the store file %s does not exist yet (the edge creates it "
                                   "when it starts)" % os.path.basename(os.fspath(path)))
        try:
            check_readable(conn, EDGE_COLUMNS)
        except BaseException:
            conn.close()
            raise
        g.db = conn
    return g.db


def close_db(exc=None):
    db = g.pop("db", None)
    if db is not None:
        db.close()


def _unavailable(exc):
    """503 for a store that cannot be read: JSON under /api (or when asked), else a page.

    ``Retry-After`` tells clients when to look again [s]; the page reloads itself from the live
    stream once the store can be read. Errors that are the web's own bugs stay 500s.
    """
    reason = unreadable_reason(exc)
    if reason is None:
        raise exc
    log.warning("store %s cannot be read (%s %s): %s", current_app.config["DATABASE"],
                request.method, request.path, reason)
    if request.path.startswith("/api/") or request.accept_mimetypes.best == "application/json":
        response = jsonify(error="the store cannot be read: %s" % reason, store="unavailable")
    else:
        response = current_app.make_response(render_template(
            "unavailable.html", reason=reason, missing=isinstance(exc, StoreMissing),
            control={"mode": "unknown"}))
    response.status_code = 503
    response.headers["Retry-After"] = "5"
    return response


def init_app(app):
    app.teardown_appcontext(close_db)
    app.register_error_handler(StoreUnavailable, _unavailable)
    app.register_error_handler(sqlite3.DatabaseError, _unavailable)
