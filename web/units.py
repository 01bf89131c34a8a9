"""Units from the project's naming convention: a value's unit is the suffix of its name.

The summary the edge writes at the end of a day is a flat ``{name: number}`` object; the
dashboard labels each value by reading the unit off its name (``energy_import_j`` -> J),
as docs/design.md §7 asks names to carry them.
"""

# Longest suffixes first, so '_per_j' wins over '_j' and '_kwh' over '_wh'.
_SUFFIX_UNITS = (
    ("_price_per_j", "price/J"),
    ("_per_kwh", "/kWh"),
    ("_per_wh", "/Wh"),
    ("_per_j", "/J"),
    ("_kwh", "kWh"),
    ("_wh", "Wh"),
    ("_kw", "kW"),
    ("_ms", "ms"),
    ("_pct", "%"),
    ("_j", "J"),
    ("_w", "W"),
    ("_v", "V"),
    ("_a", "A"),
    ("_s", "s"),
    ("_f", "F"),
)


def split_unit(name):
    """Split a value's name into a readable label and its unit.

    Parameters
    ----------
    name : str
        A project name such as ``'energy_import_j'`` or ``'solve_time_max_s'``.

    Returns
    -------
    (str, str)
        The label with the unit suffix removed and underscores as spaces, and the unit
        (``''`` when the name carries none, e.g. costs in the tariff's price unit).

    Examples
    --------
    >>> split_unit("energy_import_j")
    ('energy import', 'J')
    >>> split_unit("savings_capture")
    ('savings capture', '')
    """
    if not isinstance(name, str):
        raise TypeError("name must be a str, got %r" % (name,))
    lowered = name.lower()
    if lowered == "soc" or lowered.endswith("_soc"):
        # State of charge is a fraction; 'soc' is the quantity, so it stays in the label.
        return name.replace("_", " "), "0-1"
    for suffix, unit in _SUFFIX_UNITS:
        if lowered.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)].replace("_", " "), unit
    return name.replace("_", " "), ""
