"""The command line's work: the main job over the six notebooks (``pipeline``, ``python -m
helpers run``) and what it reports (``report``)."""
