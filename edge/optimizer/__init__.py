"""The receding-horizon optimiser and the rules it is measured against.

:mod:`~picogrid.edge.optimizer.mpc_config` holds the model's numbers, :mod:`~picogrid.edge.optimizer.economics`
sets its prices on the source's scale, :mod:`~picogrid.edge.optimizer.qp_model` builds its matrices
once, :mod:`~picogrid.edge.optimizer.scenario_qp` stacks one copy per scenario, and
:mod:`~picogrid.edge.optimizer.optimize` solves it every tick (OSQP, or the exact LP of
:mod:`~picogrid.edge.optimizer.simplex`) into a :class:`~picogrid.edge.optimizer.decision.Decision`.
:mod:`~picogrid.edge.optimizer.rules` is the rule-based dispatch (the naive baseline and the safe
fallback); :mod:`~picogrid.edge.optimizer.policies` solves the perfect-foresight optimum and
simulates a policy over a day on the same plant model, for the day's summary and the evaluation.
"""
