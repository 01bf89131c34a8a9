"""The tick loop: observe -> estimate -> forecast -> plan -> dispatch -> record.

:mod:`~picogrid.edge.control.runner` runs one day of ticks against the fleet; each stage is its own
module (:mod:`~picogrid.edge.control.estimate` for the stored energy, :mod:`~picogrid.edge.control.dispatch`
for setpoints, :mod:`~picogrid.edge.control.metering` for the measured energies,
:mod:`~picogrid.edge.control.operator` for the operator's commands, :mod:`~picogrid.edge.control.store`
for the SQLite record). :mod:`~picogrid.edge.control.service` runs the edge on real boards,
:mod:`~picogrid.edge.control.report` sums a day up against its baselines, and
:mod:`~picogrid.edge.control.plan_tick` plans one tick from a site file (``picogrid plan``).
"""
