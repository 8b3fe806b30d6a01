"""The notebook kernels of the main job (:mod:`helpers.tools.pipeline`): the next notebooks'
kernels (one or two, :func:`depth`) are started while a notebook runs, as soon as it has no cell
tagged ``timed`` left (a cell whose printed numbers are timings: a kernel loading its libraries
beside it made notebook 04's warm one-image call 79 -> 190-1970 ms); each loads the lessons'
libraries then (:mod:`helpers.tools.kernel_warmup`), and is stopped once its notebook is saved."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from helpers.core.process import PROGRESS_ENV, child_environment

NOTEBOOKS_DIR = Path(__file__).resolve().parents[2] / "notebooks"  # no torch: see start_early

KERNEL_ARGS = ["--IPKernelApp.log_level=ERROR"]
TIMED = "timed"  # the tag of a notebook cell that prints timings: nothing else runs beside it
ENGINE = "patchcore"  # papermill's nbclient engine, telling when no timed cell is left


def start_kernel(env: dict[str, str] | None = None):
    """A python3 kernel started now, in the notebooks' folder, that loads the libraries the lessons
    import as it starts (:mod:`helpers.tools.kernel_warmup`): the main job starts the next
    notebook's kernel while the current notebook runs its last, untimed cells, so a lesson finds
    its kernel up and its imports done (about 4 s a notebook on 2 CPU cores). Only the imports are
    done ahead: the notebook's own cells run in order, as in a fresh kernel. Its environment is
    :func:`~helpers.core.process.child_environment` of ``env`` (default: this process's; huge
    pages for malloc)."""
    from jupyter_client.manager import KernelManager

    warmup = Path(__file__).with_name("kernel_warmup.py")
    client = "jupyter_client.asynchronous.AsyncKernelClient"  # the client nbclient expects
    km = KernelManager(kernel_name="python3", client_class=client)
    km.start_kernel(
        cwd=str(NOTEBOOKS_DIR),
        extra_arguments=[*KERNEL_ARGS, f"--IPKernelApp.exec_files={warmup}"],
        env=child_environment(env),  # malloc with transparent huge pages (glibc)
    )
    return km


def start_early(argv: list[str]):
    """The first notebook's kernel, started by ``python -m helpers run`` (``argv``: its options)
    before anything loads torch: the job's own imports and checks take ~4.5 s on 2 CPU cores, the
    kernel's start and imports ~5.5 s, and 01 waited 4 s for a kernel started after the job's
    imports. None where the job starts its kernels itself (``--help``, ``--threads``, or no
    kernel can start); the job kills it when it does not use it (several categories)."""
    if any(a in ("-h", "--help") or a.startswith("--threads") for a in argv):
        return None
    try:
        return start_kernel({**os.environ, PROGRESS_ENV: "stderr"})  # as pipeline._threads sets
    except Exception:  # the job starts its own and says what is wrong
        return None


class Kernels:
    """The main job's kernels: some started ahead for the next notebooks, in order (see
    :func:`depth`); each used kernel is stopped when its notebook is done (:meth:`retire`).
    Every kernel is gone when the block ends, also on an error or Ctrl-C."""

    def __init__(self, ahead: bool, first=None):
        """``first``: a kernel started for the first notebook already (:func:`start_early`)."""
        self.ahead, self.queue = ahead, []
        if first is not None:
            if ahead:
                self.queue.append(first)
            else:
                self.retire(first)

    def __enter__(self) -> Kernels:
        return self

    def start_ahead(self, n: int) -> None:
        """Start kernels now (when kernels are started ahead) until ``n`` wait for the notebooks
        to come. One that cannot be started is started when its notebook runs (:meth:`take`)."""
        while self.ahead and len(self.queue) < n:
            try:
                self.queue.append(start_kernel())
            except Exception as exc:  # e.g. no python3 kernelspec: papermill will say it again
                warnings.warn(
                    f"could not start the next notebook's kernel ahead: {exc}", stacklevel=2
                )
                return

    def take(self):
        """The kernel for the notebook about to run (None when kernels are not started ahead:
        papermill starts its own); the next ones are started by :meth:`start_ahead`."""
        if not self.ahead:
            return None
        km = self.queue.pop(0) if self.queue else None
        if km is None or not km.is_alive():  # the first notebook, or a kernel that died waiting
            self.retire(km)
            try:
                km = start_kernel()
            except Exception:  # papermill starts its own and reports what is wrong, as before
                km = None
        return km

    def retire(self, km) -> None:
        """:func:`stop` ``km`` (its notebook is done)."""
        stop(km)

    def __exit__(self, *exc) -> None:
        for km in self.queue:
            self.retire(km)
        self.queue = []


def stop(km) -> None:
    """Stop ``km`` (None, or stopped already: nothing) now. Its notebook is saved, so it is
    killed, not asked to shut down: a polite exit spends ~1.2 s of a core finalising Python beside
    the next notebook's cells (04's timed one-image median 81 -> 120 ms when 03's kernel exited
    during it); a killed kernel is gone, its memory freed, in ~0.1 s."""
    if km is None:
        return
    try:
        km.shutdown_kernel(now=True)
    except Exception as exc:  # one kernel's trouble must not stop the job
        warnings.warn(f"a notebook kernel did not stop cleanly: {exc}", stacklevel=2)


def timed_cells(path) -> int:
    """How many cells of the notebook at ``path`` are tagged ``timed``."""
    import nbformat

    cells = nbformat.read(str(path), as_version=4).cells
    return sum(TIMED in c.metadata.get("tags", []) for c in cells)


def depth(quiet: list[bool], i: int) -> int:
    """How many kernels to have started ahead once notebook ``i`` (of those to run; ``quiet``: has
    no timed cell) has no timed cell left: two when it is quiet or the next one is (a kernel's
    imports, ~5 s on one core, then run beside cells whose timings nobody reads), else one; never
    more than the notebooks after ``i``. Notebook 03's timed bank-size sweep is its last long cell,
    so 04's kernel started after it was still loading when 04 began (4.4 s of the transistor job):
    it is started while 02 runs instead; 05's and 06's after 04's timed cells."""
    ahead = 2 if quiet[i] or (i + 1 < len(quiet) and quiet[i + 1]) else 1
    return min(ahead, len(quiet) - i - 1)


def register_engine() -> str:
    """Register (once) and name papermill's nbclient engine with one more keyword, ``untimed``: a
    function called once, as soon as no cell tagged ``timed`` is left to run (before the first
    cell when there is none). It also saves the output notebook less often (:func:`_save_less`)."""
    from papermill.engines import NBClientEngine, papermill_engines

    class Engine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, untimed=None, **kwargs):
            _save_less(nb_man)
            if untimed is not None:
                _call_when_untimed(nb_man, untimed)
            return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)

    try:
        papermill_engines.get_engine(ENGINE)
    except Exception:  # not registered yet (papermill raises its own PapermillException)
        papermill_engines.register(ENGINE, Engine)
    return ENGINE


def _call_when_untimed(nb_man, untimed) -> None:
    cells, called = nb_man.nb.cells, []

    def call_if_untimed(start: int) -> None:
        rest = cells[start:]
        if not called and not any(TIMED in c.metadata.get("tags", []) for c in rest):
            called.append(True)
            untimed()

    complete = nb_man.cell_complete

    def cell_complete(cell, cell_index=None, **kw):
        complete(cell, cell_index=cell_index, **kw)
        if cell_index is not None:
            call_if_untimed(cell_index + 1)

    nb_man.cell_complete = cell_complete
    call_if_untimed(0)


SAVE_EVERY = 10.0  # seconds between the running notebook's saves (papermill: at every cell)


def _save_less(nb_man, every: float = SAVE_EVERY) -> None:
    """Papermill writes the whole output notebook before and after every cell, markdown included:
    ~70 writes of up to 5 MB (the figures) per lesson, 15-26 ms each, between the cells, i.e.
    seconds of a notebook's time. Here a cell boundary saves only when ``every`` seconds have
    passed since the last save; the end of the notebook (also on an error: papermill always calls
    ``notebook_complete``) saves what the notebook holds then, so the file is the same."""
    import time

    save, complete, last = nb_man.save, nb_man.notebook_complete, [time.monotonic()]

    def save_less(**kw):
        if "nb" in kw:  # as papermill's own save does with a notebook passed in
            nb_man.nb = kw.pop("nb")
        if time.monotonic() - last[0] >= every:
            save(**kw)
            last[0] = time.monotonic()

    def notebook_complete(**kw):
        nb_man.save = save  # its own final save goes through
        complete(**kw)

    nb_man.save, nb_man.notebook_complete = save_less, notebook_complete
