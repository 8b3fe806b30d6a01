"""The PatchCore algorithm, closed: nothing here imports another part of ``helpers``.

Read it in the order of the lessons: ``config`` (every knob) -> ``images`` (decode, CLAHE,
resize + crop; notebook 01) -> ``backbones`` (the networks and the patch features; 02) ->
``coreset`` (greedy k-center, with its exact fast loops in ``coreset_fast``; 03) -> ``knn`` and
``bank`` (nearest neighbours, the memory bank M, its file and the good-only threshold; 04) ->
``maps`` (patch scores to an anomaly map; 04) -> ``model`` (PatchCore's ``fit`` and ``predict``,
all of the above in one class). ``training`` holds what a fit works on (streamed features, the
spill file, the memory estimate); ``runtime`` the device, precision and file plumbing.
"""

__version__ = "0.1.0"
