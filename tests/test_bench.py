"""The benchmark runner routes options to one benchmark; the MPC benchmark prints every solver."""

from picogrid.tools import bench


def test_options_reach_the_one_benchmark_named(capsys):
    assert bench.main(["mpc", "--ticks", "3", "--cvxpy-ticks", "3", "--horizons", "24"]) == 0
    out = capsys.readouterr().out
    assert "N=   24" in out and "3 ticks" in out
    for line in ("osqp    p50", "lp_warm p50", "cvxpy   p50", "highs   p50", "ratio p50: cvxpy/osqp",
                 "ratio p50: cvxpy/lp_warm", "simplex pivots", "lp_warm gap to exact", "pymgrid p50",
                 "pymgrid/lp_warm", "lp_warm floor: the same instance solved again"):
        assert line in out, line
    assert "over 3 instances (pivots max 0)" in out     # solved again: nothing left to pivot


def test_options_with_several_or_unknown_names_are_refused(capsys):
    assert bench.main(["mpc", "codec", "--ticks", "3"]) == 2
    assert bench.main(["nope"]) == 2
    assert "unknown benchmark" in capsys.readouterr().err
