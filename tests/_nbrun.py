"""One papermill run of the six notebooks with the CI preset, shared by test_notebooks.py and
test_pipeline.py (computed once per pytest session)."""

from __future__ import annotations

import functools
from pathlib import Path

THREADS = 1  # one OpenMP thread per kernel: far faster than two on a busy 2-core machine


@functools.cache
def ci_run(base: str) -> Path:
    from helpers.run.parameters import PRESETS
    from helpers.tools.pipeline import run_pipeline

    out = Path(base) / "ci-run"
    run_pipeline(out, params=dict(PRESETS["ci"]), threads=THREADS, log=lambda msg: None)
    return out
