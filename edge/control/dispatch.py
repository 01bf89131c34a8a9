"""From the optimiser's decision to one setpoint per board (docs/design.md §3 setpoint meaning).

pv: a power cap only when the plan curtails, else "no cap" (-1); storage: bus-side power,
+ discharge, in island mode when the grid is lost; grid: the bus voltage reference; loads:
served power; shed (MODE_SHED) when the plan serves (almost) nothing of a real demand, plain
0 W when there is no demand to serve. The deferrable load (the board of the ``deferrable``
priority class) also takes the power the plan delivers to deferrable jobs, on top of what it
serves of its own demand.
"""

from picogrid.firmware import protocol as P

_SHED_BELOW_W = 1e-3
_CURTAIL_MARGIN_W = 1e-3


def setpoints(decision, pv_forecast_w, bus_voltage_ref_v, islanded, demand_w=None,
              loads=("load1", "load2", "load3"), deferrable_load=None):
    """Return name -> (mode, value) for every board.

    Parameters
    ----------
    decision : picogrid.edge.optimizer.optimize.Decision
    pv_forecast_w : float, available PV the plan assumed for this step [W]
    bus_voltage_ref_v : float [V]
    islanded : bool, the grid is lost: storage regulates the bus
    demand_w : array [L] or None, each load's demand now [W]; None = every load has demand
    deferrable_load : str or None, the board that delivers ``decision.p_deferrable_w`` [W]
    """
    out = {}
    curtail = decision.pv_cap_w < pv_forecast_w - _CURTAIL_MARGIN_W
    out["pv"] = (P.MODE_NORMAL, float(decision.pv_cap_w) if curtail else -1.0)
    out["storage"] = (P.MODE_ISLAND if islanded else P.MODE_NORMAL, float(decision.p_storage_w))
    out["grid"] = (P.MODE_NORMAL, float(bus_voltage_ref_v))
    demand = [None] * len(loads) if demand_w is None else [float(d) for d in demand_w]
    for name, served, wanted in zip(loads, decision.load_served_w, demand):
        served = float(served)
        shed = served < _SHED_BELOW_W and (wanted is None or wanted >= _SHED_BELOW_W)
        jobs_w = max(float(decision.p_deferrable_w), 0.0) if name == deferrable_load else 0.0
        if shed and jobs_w < _SHED_BELOW_W:
            out[name] = (P.MODE_SHED, 0.0)
        else:
            out[name] = (P.MODE_NORMAL, max(0.0 if shed else served, 0.0) + jobs_w)
    return out
