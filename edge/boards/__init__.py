"""The boards as the edge sees them: links, the fleet and its health.

:mod:`~picogrid.edge.boards.links` carries the protocol's frames over USB serial or TCP (with the
per-board HMAC key where the site gives one), :mod:`~picogrid.edge.boards.fleet` keeps each board's
identity, latest telemetry, acks and events, and :mod:`~picogrid.edge.boards.health` tells when a
board has gone quiet or the bus energy does not balance. Nothing here plans or decides.
"""
