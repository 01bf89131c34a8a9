"""Where a day's signals come from: a replayed real day or the lab market feed.

:mod:`~picogrid.edge.sources.signals` names the series and replays a recorded day tick by tick;
:mod:`~picogrid.edge.sources.labfeed` is the client of the lab kit's market feed (with its cache and
online day learner), :mod:`~picogrid.edge.sources.feedsource` turns it into the tick loop's source
and forecaster, :mod:`~picogrid.edge.sources.feedmemory` keeps the feed days seen across runs, and
:mod:`~picogrid.edge.sources.deferrable` holds the deferrable jobs a source states (normalised
windows, the energy each job got, the board that delivers them).
"""
