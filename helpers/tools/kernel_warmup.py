"""Run by each notebook kernel that ``python -m helpers run`` starts ahead of its notebook
(IPython's ``exec_files``, :func:`helpers.tools.kernels.start_kernel`): it loads the libraries the
lessons import, while the notebook before is still running, so that the lesson's setup cell finds
them loaded (4 s of imports per notebook on a 2-core CPU). It leaves no name behind in the
notebook's namespace, and a library that fails to load is left for the lesson to report."""


def _load_libraries() -> None:
    import importlib

    for name in ("numpy", "torch", "torchvision", "cv2", "scipy.ndimage", "sklearn.metrics",
                 "matplotlib.figure", "safetensors.torch", "ipywidgets"):  # fmt: skip
        try:
            importlib.import_module(name)
        except Exception:  # the lesson's own import says what is missing
            pass


_load_libraries()
del _load_libraries
