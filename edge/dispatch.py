"""From the optimiser's decision to one setpoint per board (DESIGN.md §3 setpoint meaning).

pv: a power cap only when the plan curtails, else "no cap" (-1); storage: bus-side power,
+ discharge, in island mode when the grid is lost; grid: the bus voltage reference; loads:
served power, shed when the plan serves (almost) nothing.
"""

from picogrid.firmware import protocol as P

_SHED_BELOW_W = 1e-3
_CURTAIL_MARGIN_W = 1e-3


def setpoints(decision, pv_forecast_w, bus_voltage_ref_v, islanded, loads=("load1", "load2", "load3")):
    """Return name -> (mode, value) for every board.

    Parameters
    ----------
    decision : picogrid.edge.optimize.Decision
    pv_forecast_w : float, available PV the plan assumed for this step [W]
    bus_voltage_ref_v : float [V]
    islanded : bool, the grid is lost: storage regulates the bus
    """
    out = {}
    curtail = decision.pv_cap_w < pv_forecast_w - _CURTAIL_MARGIN_W
    out["pv"] = (P.MODE_NORMAL, float(decision.pv_cap_w) if curtail else -1.0)
    out["storage"] = (P.MODE_ISLAND if islanded else P.MODE_NORMAL, float(decision.p_storage_w))
    out["grid"] = (P.MODE_NORMAL, float(bus_voltage_ref_v))
    for name, served in zip(loads, decision.load_served_w):
        served = float(served)
        out[name] = (P.MODE_SHED, 0.0) if served < _SHED_BELOW_W else (P.MODE_NORMAL, served)
    return out
