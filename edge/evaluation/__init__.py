"""Research harness, never imported by the edge at run time: policies over many days.

:mod:`~picogrid.edge.evaluation.evaluate` runs the MPC, the naive rule, perfect foresight, a
day-ahead plan and pymgrid's MPC (:mod:`~picogrid.edge.evaluation.pymgrid_policy`) in closed loop
over real days; :mod:`~picogrid.edge.evaluation.feed_evaluate` does the same through the lab feed's
client; :mod:`~picogrid.edge.evaluation.energy_calibration_fit` fits the scenario energy calibration;
:mod:`~picogrid.edge.evaluation.command` is ``picogrid evaluate``. It needs the ``data`` extra (pandas
and the datasets).
"""
