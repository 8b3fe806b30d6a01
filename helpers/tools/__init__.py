"""The command line's work: the main job over the six notebooks (``pipeline``, ``python -m
helpers run``), its guards, reports and batches (``report``), ``predict`` and ``export``."""
