"""The site file: one TOML describing boards, ports, roles, limits and tariffs (docs/design.md §7).

``edge/sites/lab.toml`` is the lab bench, ``edge/sites/site.toml`` a home. Board ids and
secrets are resolved here once, so the HIL bench, the flashing tool and the edge agree.
"""

import os
import pathlib
import tomllib

SITE_DIR = pathlib.Path(__file__).resolve().parent / "sites"
REPO = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_SECRETS = REPO / "secrets" / "picogrid.toml"


def load_site(path=None, **overrides):
    """Parse a site TOML (default: the lab bench) and apply ``[bench]`` overrides.

    Raises
    ------
    ValueError for an override of a setting the site file does not have (a typo).
    """
    path = pathlib.Path(path) if path else SITE_DIR / "lab.toml"
    with open(path, "rb") as f:
        site = tomllib.load(f)
    unknown = set(overrides) - set(site["bench"])
    if unknown:
        raise ValueError("unknown bench settings: %s" % sorted(unknown))
    site["bench"].update({k: v for k, v in overrides.items() if v is not None})
    return site


def board_ids(site):
    """Board name -> protocol id: ``[boards.X] id`` where given, else 1.. in file order.

    Raises
    ------
    ValueError if two boards end up with the same id or an id is outside 1..255.
    """
    ids = {name: int(b.get("id", k)) for k, (name, b) in enumerate(site["boards"].items(), start=1)}
    if len(set(ids.values())) != len(ids) or not all(1 <= i <= 255 for i in ids.values()):
        raise ValueError("board ids must be distinct and within 1..255: %s" % ids)
    return ids


def deferrable_board(site):
    """The board that delivers deferrable jobs and its rating: ``(name, power_max_w [W])``.

    The first load board of the ``deferrable`` priority class; ``(None, 0.0)`` when the site
    has no deferrable job slots (``[deferrable] n_jobs``) or no such board.
    """
    if int(site.get("deferrable", {}).get("n_jobs", 0)) == 0:
        return None, 0.0
    for name, b in site.get("boards", {}).items():
        if b.get("priority") == "deferrable" and b.get("role", "").startswith("load"):
            return name, float(b.get("limits", {}).get("power_max_w", 0.0))
    return None, 0.0


def load_secrets(path=None):
    """Per-board keys and Wi-Fi from the secrets TOML, kept outside git; returns ``(dict, path)``.

    The path is ``path``, else ``$PICOGRID_SECRETS``, else ``secrets/picogrid.toml`` (ignored
    by git). A missing file gives an empty dict: serial boards need no secrets.
    """
    path = pathlib.Path(path or os.environ.get("PICOGRID_SECRETS") or DEFAULT_SECRETS)
    if not path.exists():
        return {}, path
    with open(path, "rb") as f:
        return tomllib.load(f), path
