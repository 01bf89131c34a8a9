"""Operator commands from the store's command table, as the edge applies them each tick."""

import time

import pytest

from picogrid.edge.control.operator import Operator
from picogrid.edge.control.store import Store
from picogrid.firmware import protocol as P
from picogrid.hil.day import load_site

PLAN = {"pv": (0, -1.0), "storage": (0, 0.5), "grid": (0, 7.0),
        "load1": (0, 0.2), "load2": (0, 0.3), "load3": (P.MODE_SHED, 0.0)}


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "edge.sqlite")
    s.start_run("lab", "2013-07-16", 60, 2.5, {})
    yield s
    s.close()


def command(store, kind, board=None, value=None, mode=None, user="ana"):
    store.conn.execute("INSERT INTO command (created_at, user, kind, board, value, mode) VALUES (?,?,?,?,?,?)",
                       (time.time(), user, kind, board, value, mode))
    store.commit()


def statuses(store):
    return [tuple(r) for r in store.conn.execute("SELECT kind, status, result FROM command ORDER BY id")]


@pytest.mark.parametrize("kind, board, value, mode, expect_status, expect_text", [
    ("override", "load2", 0.6, None, "applied", "load2 = 0.6"),
    ("override", "load2", 5.0, None, "applied", "clamped from 5 to the limits [0, 1]"),
    ("override", "storage", -9.0, None, "applied", "storage = -2"),
    ("override", "grid", 9.0, None, "applied", "grid = 7.35"),
    ("override", "toaster", 1.0, None, "rejected", "unknown board"),
    ("override", "load1", None, None, "rejected", "finite value"),
    ("shed", "storage", None, None, "rejected", "only loads"),
    ("mode", None, None, "turbo", "rejected", "unknown mode"),
    ("approve", None, 3, None, "rejected", "no plan waiting"),
    ("launch", "pv", None, None, "rejected", "unknown command kind"),
])
def test_each_command_is_applied_or_refused_with_a_reason(store, kind, board, value, mode,
                                                           expect_status, expect_text):
    op = Operator(load_site())
    command(store, kind, board, value, mode)
    op.poll(store.conn)
    (_, status, text), = statuses(store)
    assert status == expect_status and expect_text in text


def test_override_and_shed_apply_on_top_of_the_plan(store):
    op = Operator(load_site())
    command(store, "override", "load2", 0.6)
    command(store, "shed", "load1")
    op.poll(store.conn)
    sp, note = op.setpoints(5, PLAN, None)
    assert sp["load2"] == (P.MODE_NORMAL, 0.6)
    assert sp["load1"] == (P.MODE_SHED, 0.0)
    assert sp["storage"] == PLAN["storage"]
    assert "load1 shed" in note and "load2 0.6" in note
    command(store, "restore", "load1")
    command(store, "clear_override", "load2")
    op.poll(store.conn)
    assert op.setpoints(6, PLAN, sp)[0] == PLAN


def test_manual_mode_holds_the_last_setpoints(store):
    op = Operator(load_site())
    command(store, "mode", mode="manual")
    op.poll(store.conn)
    last = dict(PLAN, storage=(0, -1.0))
    sp, note = op.setpoints(7, PLAN, last)
    assert sp == last and "manual" in note


def test_approve_mode_sends_a_plan_only_once_approved(store):
    op = Operator(load_site())
    command(store, "mode", mode="approve")
    op.poll(store.conn)
    held = dict(PLAN, storage=(0, 0.0))
    sp, note = op.setpoints(10, PLAN, held)          # tick 10's plan is proposed, not sent
    assert sp == held and "awaits approval" in note
    command(store, "approve", value=9)               # a stale plan: refused
    command(store, "approve", value=10)
    op.poll(store.conn)
    assert [s[1] for s in statuses(store)][-2:] == ["rejected", "applied"]
    newer = dict(PLAN, storage=(0, 1.5))
    sp, _ = op.setpoints(11, newer, held)            # the approved tick-10 plan goes out
    assert sp == PLAN


def test_restore_and_clear_work_in_manual_mode(store):
    # review finding: manual mode held the overridden setpoints, so restore changed nothing
    op = Operator(load_site())
    op.setpoints(1, PLAN, None)
    command(store, "mode", mode="manual")
    command(store, "shed", "load1")
    command(store, "override", "load2", 0.9)
    op.poll(store.conn)
    sp, _ = op.setpoints(2, dict(PLAN, storage=(0, 1.0)), PLAN)
    assert sp["load1"] == (P.MODE_SHED, 0.0) and sp["load2"] == (0, 0.9)
    assert sp["storage"] == PLAN["storage"]          # manual: the plan is not applied
    command(store, "restore", "load1")
    command(store, "clear_override", "load2")
    op.poll(store.conn)
    sp, _ = op.setpoints(3, dict(PLAN, storage=(0, 1.0)), sp)
    assert sp == PLAN


def test_storage_bounds_follow_the_sites_charge_and_discharge_limits():
    from picogrid.edge.control.operator import setpoint_bounds
    from picogrid.edge.site import SITE_DIR, load_site as load_site_file

    assert setpoint_bounds(load_site_file())["storage"] == (-2.0, 2.0)        # lab: power_max_w
    battery = load_site_file(SITE_DIR / "site.toml")
    battery["storage"]["charge_power_max_w"] = 3000.0                         # asymmetric limits
    assert setpoint_bounds(battery)["storage"] == (-3000.0, 5000.0)


def test_a_command_queued_for_an_earlier_run_is_not_applied(store):
    """Commands still pending when a run ended are another run's: the next run's edge rejects
    them, with a reason, and starts in automatic mode without overrides."""
    command(store, "mode", mode="manual")
    command(store, "override", "storage", -1.0)
    time.sleep(0.01)
    store.start_run("lab", "2013-07-17", 60, 2.5, {})           # the next day, same store
    command(store, "override", "load2", 0.6)
    op = Operator(load_site())
    op.poll(store.conn, since=store.started_at)
    assert [s[1] for s in statuses(store)] == ["rejected", "rejected", "applied"]
    assert "earlier run" in statuses(store)[0][2] and op.mode == "automatic"
    assert set(op.overrides) == {"load2"}
