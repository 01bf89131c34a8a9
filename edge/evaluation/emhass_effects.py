"""``python -m picogrid.edge.evaluation.emhass_effects``: each EMHASS convention's effect on real days.

EMHASS's day-ahead plan (:mod:`picogrid.edge.evaluation.emhass_policy`) on perfect forecasts,
followed on the day it was planned on, against our perfect-foresight LP of the same day, with
each convention of :data:`~picogrid.edge.evaluation.emhass_policy.VARIANTS` in turn (and, on the
lab, with the ESR discharge cap off in both models, as EMHASS has none). Its own module: it reads
the days through :class:`~picogrid.edge.evaluation.evaluate.ProfileDays`, which imports
``emhass_policy``.
"""

from __future__ import annotations

import logging

import numpy as np
from picogrid.edge.evaluation.emhass_policy import convention_effects
from picogrid.edge.optimizer import economics, policies


def main(argv=None):
    """``python -m picogrid.edge.evaluation.emhass_effects [--profile lab] [--days 3]``: the effect of
    each convention (:func:`convention_effects`) on the real days ``picogrid evaluate`` scores,
    summed over the days, as a share of the naive rule's gap to the optimum (savings capture)."""
    import argparse

    from picogrid.edge.evaluation.evaluate import PROFILES, ProfileDays

    ap = argparse.ArgumentParser(prog="python -m picogrid.edge.evaluation.emhass_effects", description=main.__doc__)
    ap.add_argument("--profile", choices=PROFILES, default="lab")
    ap.add_argument("--days", type=int, default=3)
    ap.add_argument("--first-day", default="2013-07-01")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    run = ProfileDays(args.profile, args.first_day, args.days, compare=False)
    cfgs = {"as in the site file": run.cfg}
    if np.isfinite(run.cfg.p_dis_per_e_max_per_s):      # the lab's ESR cap: EMHASS has none
        cfgs["ESR discharge cap off (both models)"] = run.cfg.replace(p_dis_per_e_max_per_s=float("inf"))
    for label, cfg in cfgs.items():
        total, naive = {}, 0.0
        for d in range(args.days):
            truth = run.data.truth(d + run.hist_days, cfg)
            naive += policies.simulate_policy(policies.naive_policy(truth, cfg), truth, cfg).total_cost
            for k, v in convention_effects(truth, cfg).items():
                total[k] = total.get(k, 0.0) + v
        best = total["ours: perfect-foresight LP"]
        print(f"{args.profile}, {label}: {args.days} days from {args.first_day}, perfect forecasts, "
              f"day-ahead plan followed")
        for k, v in total.items():
            cap = economics.savings_capture(naive, v, best)
            print(f"  {k:38s} cost {v:12.6g}  (vs ours {v - best:+.4g}; capture {100 * cap:6.2f} %)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
