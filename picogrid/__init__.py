"""PicoGrid: energy management for small DC microgrids.

The import package maps the repository's top-level folders: ``picogrid.edge`` is
``edge/``, ``picogrid.firmware`` is ``firmware/`` and so on (see pyproject.toml).
"""

__version__ = "0.1.0"
