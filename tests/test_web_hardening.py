"""Dashboard hardening (issue 27): login rate limits, bounded fields, a CSRF check that cannot
raise, the same work for unknown and known users, and a 503 for a store that cannot be read.

Real SQLite files in ``tmp_path`` written by the edge's own ``Store``, the Flask test client.
No test waits on the wall clock: the rate limiter's clock is a fake one that the test moves.
"""

import json
import os
import sqlite3
import time

import limits.storage.memory
import pytest
from werkzeug.security import generate_password_hash

import picogrid.web.control as control
from picogrid.edge.control.store import Store
from test_web import PASSWORD, SSEReader, log_in, make_client, page_csrf, rows, write_baselines, write_tick


@pytest.fixture
def day_db(tmp_path):
    """A store with a running day of 3 ticks; closed, so the test may break the file."""
    path = tmp_path / "picogrid.sqlite"
    store = Store(path)
    store.start_run("lab", "2010-06-14", 60, 5.0, {})
    write_baselines(store, 5)
    for tick in range(3):
        write_tick(store, tick)
    store.close()
    return path


@pytest.fixture
def site_file(tmp_path):
    path = tmp_path / "site.toml"
    path.write_text('[web]\nusers = { alice = "%s" }\n' % generate_password_hash(PASSWORD, "pbkdf2:sha256:1000"))
    return path


class FakeClock:
    """Stands in for the ``time`` module of the limiter's in-memory storage: a clock we move."""

    def __init__(self):
        self.now = time.time()

    def time(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(limits.storage.memory, "time", fake)
    return fake


def attempt(client, user, password, addr="10.0.0.1"):
    """One login POST from ``addr`` with a valid CSRF token of the client's session."""
    token = page_csrf(client)
    return client.post("/login", data={"username": user, "password": password, "csrf_token": token},
                       environ_base={"REMOTE_ADDR": addr})


# --- 1. rate limits -----------------------------------------------------------------------

def test_five_failures_a_minute_lock_the_name_then_the_minute_passes(day_db, site_file, clock):
    client = make_client(day_db, SITE_CONFIG=str(site_file))
    # from five addresses, so that only the per-name limit can apply
    for i in range(5):
        assert attempt(client, "alice", "guess%d" % i, addr="10.0.0.%d" % (10 + i)).status_code == 401
    limited = attempt(client, "alice", PASSWORD, addr="10.0.0.99")     # the right password, too late
    assert limited.status_code == 429
    assert 1 <= int(limited.headers["Retry-After"]) <= 61     # the window's end, rounded up [s]
    assert b"too many login attempts" in limited.data and b"Operator login" in limited.data
    assert client.get("/api/control").get_json()["user"] is None
    audit = rows(day_db, "audit")
    assert [a["action"] for a in audit] == ["login_failed"] * 5 + ["login_rate_limited"]
    assert audit[-1]["user"] == "alice" and audit[-1]["remote_addr"] == "10.0.0.99"
    assert json.loads(audit[-1]["detail"])["limit"].startswith("5 per 1 minute")
    clock.now += 61.0                                                     # the minute has passed
    assert attempt(client, "alice", PASSWORD, addr="10.0.0.99").status_code == 303


def test_twenty_failures_an_hour_lock_the_name_for_the_hour(day_db, site_file, clock):
    client = make_client(day_db, SITE_CONFIG=str(site_file))
    for i in range(20):
        if i and i % 5 == 0:
            clock.now += 61.0            # stay under 5 a minute
        assert attempt(client, "alice", "guess", addr="10.1.0.%d" % i).status_code == 401
    clock.now += 61.0
    assert attempt(client, "alice", PASSWORD, addr="10.1.1.1").status_code == 429
    clock.now += 3600.0
    assert attempt(client, "alice", PASSWORD, addr="10.1.1.1").status_code == 303


def test_successful_logins_do_not_count_against_the_name(day_db, site_file, clock):
    client = make_client(day_db, SITE_CONFIG=str(site_file))
    for i in range(8):
        assert attempt(client, "alice", PASSWORD, addr="10.2.0.%d" % i).status_code == 303


def test_one_address_cannot_try_many_names(day_db, site_file, clock):
    client = make_client(day_db, SITE_CONFIG=str(site_file))
    for i in range(10):
        assert attempt(client, "user%d" % i, "guess", addr="10.3.0.1").status_code == 401
    assert attempt(client, "alice", PASSWORD, addr="10.3.0.1").status_code == 429
    assert attempt(client, "alice", PASSWORD, addr="10.3.0.2").status_code == 303   # another host
    # refused attempts leave one audit row a minute per address and name, not one each
    for _ in range(5):
        assert attempt(client, "mallory", "guess", addr="10.3.0.1").status_code == 429
    limited = [a for a in rows(day_db, "audit") if a["action"] == "login_rate_limited"]
    assert [(a["user"], a["remote_addr"]) for a in limited] == [("alice", "10.3.0.1"), ("mallory", "10.3.0.1")]


def test_rate_limited_json_client_gets_json(day_db, site_file, clock):
    client = make_client(day_db, SITE_CONFIG=str(site_file))
    for _ in range(5):
        attempt(client, "alice", "guess")
    token = page_csrf(client)
    answer = client.post("/login", data={"username": "alice", "password": PASSWORD, "csrf_token": token},
                         headers={"Accept": "application/json"}, environ_base={"REMOTE_ADDR": "10.0.0.1"})
    assert answer.status_code == 429 and "try again in" in answer.get_json()["error"]
    assert int(answer.headers["Retry-After"]) >= 1


def test_limiter_reset_clears_the_counters(day_db, site_file, clock):
    client = make_client(day_db, SITE_CONFIG=str(site_file))
    for _ in range(5):
        attempt(client, "alice", "guess")
    assert attempt(client, "alice", PASSWORD).status_code == 429
    client.application.extensions["picogrid_limiter"].reset()
    assert attempt(client, "alice", PASSWORD).status_code == 303


# --- 2. bounded fields ----------------------------------------------------------------------

@pytest.fixture
def hash_calls(monkeypatch):
    """Every password-hash verification the login makes: (stored hash, password)."""
    calls = []
    real = control.check_password_hash

    def counting(stored, password):
        calls.append((stored, password))
        return real(stored, password)

    monkeypatch.setattr(control, "check_password_hash", counting)
    return calls


@pytest.mark.parametrize("field, value", [
    ("username", "a" * 65),
    ("password", "p" * 257),
])
def test_overlong_login_fields_are_400_before_hash_and_store(day_db, site_file, hash_calls, field, value):
    client = make_client(day_db, SITE_CONFIG=str(site_file))
    form = {"username": "alice", "password": PASSWORD, "csrf_token": page_csrf(client), field: value}
    answer = client.post("/login", data=form)
    assert answer.status_code == 400 and b"longer than" in answer.data
    assert hash_calls == [] and rows(day_db, "audit") == []


def test_a_huge_body_is_refused_whole(day_db, site_file, hash_calls):
    """The review's 400 kB user name: refused by the body cap (413), nothing stored."""
    client = make_client(day_db, SITE_CONFIG=str(site_file))
    token = page_csrf(client)
    for _ in range(5):
        answer = client.post("/login", data={"username": "x" * 400_000, "password": "p", "csrf_token": token})
        assert answer.status_code == 413
    assert hash_calls == [] and rows(day_db, "audit") == []
    assert os.path.getsize(day_db) < 1_000_000


@pytest.mark.parametrize("body", [
    {"kind": "shed", "board": "load" + "1" * 100},
    {"kind": "k" * 1000},
    {"kind": "override", "board": "storage", "value": "1" * 1000},
    {"kind": "mode", "mode": "m" * 100},
])
def test_overlong_command_fields_are_400_without_audit(day_db, site_file, body):
    client = make_client(day_db, SITE_CONFIG=str(site_file))
    _, token = log_in(client)
    answer = client.post("/api/commands", json=body, headers={"X-CSRF-Token": token})
    assert answer.status_code == 400 and "longer than" in answer.get_json()["error"]
    assert rows(day_db, "command") == []
    assert [a["action"] for a in rows(day_db, "audit")] == ["login"]


def test_audit_rows_keep_a_bounded_part_of_what_a_client_sent(day_db, site_file):
    client = make_client(day_db, SITE_CONFIG=str(site_file))
    _, token = log_in(client)
    answer = client.post("/api/commands", json={"kind": "shed", "board": "b" * 32},
                         headers={"X-CSRF-Token": token})
    assert answer.status_code == 400
    refused = rows(day_db, "audit")[-1]
    assert refused["action"] == "command_refused"
    detail = json.loads(refused["detail"])
    assert detail["form"]["board"] == "b" * 32
    assert all(len(v) <= control.AUDIT_TEXT_MAX for v in detail["form"].values())
    assert len(detail["reason"]) <= control.AUDIT_TEXT_MAX and detail["reason"].endswith("\u2026")


# --- 3. a CSRF check that cannot raise ------------------------------------------------------

@pytest.mark.parametrize("token", ["\u00e9t\u00e9", "\u0442\u043e\u043a\u0435\u043d"])
def test_non_ascii_csrf_tokens_are_a_plain_400(day_db, site_file, token):
    client = make_client(day_db, SITE_CONFIG=str(site_file))
    page_csrf(client)
    answer = client.post("/login", data={"username": "alice", "password": PASSWORD, "csrf_token": token})
    assert answer.status_code == 400 and b"malformed CSRF token" in answer.data
    log_in(client)
    command = client.post("/api/commands", data={"kind": "mode", "mode": "manual", "csrf_token": token},
                          headers={"Accept": "application/json"})
    assert command.status_code == 400 and "malformed CSRF token" in command.get_json()["error"]
    assert rows(day_db, "command") == []


def test_non_ascii_csrf_header_is_a_plain_400(day_db, site_file):
    client = make_client(day_db, SITE_CONFIG=str(site_file))
    log_in(client)
    answer = client.post("/api/commands", json={"kind": "mode", "mode": "manual"},
                         headers={"X-CSRF-Token": "caf\u00e9"})
    assert answer.status_code == 400 and "malformed CSRF token" in answer.get_json()["error"]


@pytest.mark.parametrize("token", ["x" * 129, "a b", "tok;en"])
def test_csrf_tokens_not_of_the_token_shape_are_400(day_db, site_file, token):
    client = make_client(day_db, SITE_CONFIG=str(site_file))
    log_in(client)
    answer = client.post("/api/commands", json={"kind": "mode", "mode": "manual"}, headers={"X-CSRF-Token": token})
    assert answer.status_code == 400 and "malformed CSRF token" in answer.get_json()["error"]


def test_the_comparison_itself_cannot_raise():
    """Even without the shape check in front, odd tokens compare as unequal, never raise."""
    assert not control._token_matches("caf\u00e9", "abc")
    assert not control._token_matches("\udcff", "abc")
    assert not control._token_matches(None, "abc") and not control._token_matches(b"abc", "abc")
    assert not control._token_matches("abc", None)
    assert control._token_matches("abc", "abc")


# --- 4. the same work for unknown and known users -------------------------------------------

def test_unknown_and_known_users_cost_one_hash_verification_each(day_db, site_file, hash_calls):
    client = make_client(day_db, SITE_CONFIG=str(site_file))
    assert attempt(client, "alice", "wrong").status_code == 401
    assert attempt(client, "nobody", "wrong").status_code == 401
    assert len(hash_calls) == 2
    known, unknown = hash_calls[0][0], hash_calls[1][0]
    # the dummy hash has the same method and cost as the site's own hash, not a cheaper one
    assert unknown.split("$")[0] == known.split("$")[0] == "pbkdf2:sha256:1000"
    assert unknown != known


def test_view_only_dashboard_still_verifies_a_dummy_hash(day_db, hash_calls):
    client = make_client(day_db)     # no site file, no users
    assert attempt(client, "alice", PASSWORD).status_code == 401
    assert len(hash_calls) == 1


# --- 5. a store that cannot be read ---------------------------------------------------------

PAGES = ("/", "/consumption", "/finance", "/forecasts", "/boards")
API = ("/api/runs", "/api/latest", "/api/run/1/dispatch", "/api/run/1/summary", "/api/run/1/consumption",
       "/api/run/1/finance", "/api/run/1/forecast", "/api/run/1/boards", "/api/control",
       "/api/commands", "/api/audit")


def garbage(path):
    """Random bytes over the whole file, as a failing disk or a stray write would leave it."""
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.write(os.urandom(size))


def garbage_after_header(path):
    """The SQLite header kept, every page after the first overwritten: a malformed image."""
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.seek(4096)
        f.write(os.urandom(size - 4096))


def another_programs_file(path):
    os.remove(path)
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
    conn.commit()
    conn.close()


def an_unknown_schema_version(path):
    """The edge's table names, other columns (a future or foreign schema)."""
    os.remove(path)
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE run (id INTEGER PRIMARY KEY, begun REAL)")
    conn.execute("CREATE TABLE dispatch (run INTEGER, what TEXT)")
    conn.execute("INSERT INTO run VALUES (1, 0.0)")
    conn.commit()
    conn.close()


BREAKS = {
    "missing": (os.remove, "does not exist"),
    "garbage": (garbage, "file is not a database"),
    "malformed": (garbage_after_header, "malformed"),
    "foreign": (another_programs_file, "does not know"),
    "unknown-columns": (an_unknown_schema_version, "does not know (no column dispatch.balance_residual_j"),
}


@pytest.mark.parametrize("how", sorted(BREAKS))
def test_every_page_and_endpoint_says_503_when_the_store_cannot_be_read(day_db, how):
    breaker, reason = BREAKS[how]
    breaker(str(day_db))
    client = make_client(day_db)
    for path in PAGES:
        page = client.get(path)
        assert page.status_code == 503, (path, page.status_code)
        html = page.get_data(as_text=True)
        assert "The store cannot be read" in html and reason in html, path
        assert page.headers["Retry-After"] == "5"
    for path in API:
        answer = client.get(path)
        assert answer.status_code == 503, (path, answer.status_code)
        body = answer.get_json()
        assert body["store"] == "unavailable" and reason in body["error"], path


def test_a_locked_store_is_503_after_the_timeout(day_db):
    conn = sqlite3.connect(str(day_db), isolation_level=None)
    conn.execute("PRAGMA journal_mode=DELETE")     # the rollback journal: a writer locks readers out
    conn.execute("BEGIN EXCLUSIVE")
    try:
        client = make_client(day_db, STORE_TIMEOUT_S=0.01)
        assert client.get("/").status_code == 503
        answer = client.get("/api/latest")
        assert answer.status_code == 503 and "locked" in answer.get_json()["error"]
    finally:
        conn.execute("ROLLBACK")
        conn.close()
    assert client.get("/api/latest").status_code == 200      # and back once the lock is gone


def test_control_with_a_corrupt_store_is_503(day_db, site_file):
    client = make_client(day_db, SITE_CONFIG=str(site_file))
    _, token = log_in(client)
    garbage(str(day_db))
    answer = client.post("/api/commands", json={"kind": "mode", "mode": "manual"}, headers={"X-CSRF-Token": token})
    assert answer.status_code == 503 and "file is not a database" in answer.get_json()["error"]
    assert client.post("/login", data={"username": "alice", "password": PASSWORD,
                                       "csrf_token": token}).status_code == 503


def test_pages_come_back_when_the_store_is_readable_again(day_db, tmp_path):
    good = tmp_path / "good.sqlite"
    good.write_bytes(day_db.read_bytes())
    garbage(str(day_db))
    client = make_client(day_db)
    assert client.get("/").status_code == 503
    os.replace(good, day_db)
    page = client.get("/")
    assert page.status_code == 200 and b"2010-06-14" in page.data


def test_stream_says_the_store_cannot_be_read_and_keeps_trying(day_db, tmp_path):
    good = tmp_path / "good.sqlite"
    good.write_bytes(day_db.read_bytes())
    garbage(str(day_db))
    response = make_client(day_db).get("/api/stream", buffered=False)
    assert response.status_code == 200       # EventSource gives up for good on any other status
    reader = SSEReader(response)
    try:
        first = reader.next_event()["data"]
        assert "file is not a database" in first["store_error"] and first["latest"]["run"] is None
        os.replace(good, day_db)               # repaired: the same stream sees the run
        event = reader.next_event()["data"]
        assert "store_error" not in event and event["latest"]["run"]["scenario"] == "2010-06-14"
        broken = tmp_path / "broken.sqlite"     # and broken again: a garbage file put in its place
        broken.write_bytes(os.urandom(8192))
        os.replace(broken, day_db)
        assert "file is not a database" in reader.next_event()["data"]["store_error"]
    finally:
        response.close()


def test_stream_waits_for_a_missing_store(tmp_path):
    path = tmp_path / "picogrid.sqlite"
    response = make_client(path).get("/api/stream", buffered=False)
    reader = SSEReader(response)
    try:
        assert "does not exist yet" in reader.next_event()["data"]["store_error"]
        store = Store(path)
        try:
            store.start_run("lab", "2010-06-14", 60, 5.0, {})
            write_tick(store, 0)
            event = reader.next_event()["data"]
        finally:
            store.close()
        assert "store_error" not in event and event["latest"]["run"]["scenario"] == "2010-06-14"
    finally:
        response.close()


def test_the_unavailable_page_reloads_itself_from_the_stream(day_db):
    garbage(str(day_db))
    client = make_client(day_db)
    html = client.get("/").get_data(as_text=True)
    assert 'data-page="unavailable"' in html
    script = client.get("/static/app.js").get_data(as_text=True)
    assert 'PAGE === "unavailable"' in script and "store_error" in script


def test_rate_limited_login_over_a_corrupt_store_is_still_429(day_db, site_file, clock):
    client = make_client(day_db, SITE_CONFIG=str(site_file))
    for _ in range(5):
        attempt(client, "alice", "guess")
    garbage(str(day_db))
    assert attempt(client, "alice", PASSWORD).status_code == 429
