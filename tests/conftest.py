"""Shared fixtures: a tiny synthetic MVTec set and a fitted MobileNetV2 PatchCore (offline
weights). The set is the synthetic generator's "easy" level (fixed lighting, clearly visible
defects): on 10 training images of 128 px the lessons' "hard" set is too close to chance for
test_model's accuracy check to mean anything."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# The run-folder tests' smallest settings: MobileNetV2 at 64 px on the CPU, a quarter of the
# patches kept; TINY adds a 64 px synthetic set of 4 training and 3 test images.
SMALL = dict(
    backbone="mobilenet_v2",
    input_size=64,
    resize=64,
    batch_size=4,
    device="cpu",
    coreset_ratio=0.25,
)
TINY = dict(
    SMALL, synthetic_size=64, synthetic_n_train=4, synthetic_n_test_good=2, synthetic_n_per_defect=1
)


def make_run(run_dir, **params):
    """A :class:`helpers.run.run.Run` of TINY in ``run_dir``, ``params`` changed."""
    from helpers.run.run import Run

    return Run.from_params({**TINY, **params, "run_dir": str(run_dir)}, verbose=False)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    from helpers.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("synthetic")
    return generate_dataset(
        root, size=128, n_train=10, n_test_good=4, n_per_defect=3, seed=0, difficulty="easy"
    )


@pytest.fixture(scope="session")
def samples(synth_root):
    from helpers.data.mvtec import list_samples

    return (
        list_samples(synth_root, "metal_nut", "train"),
        list_samples(synth_root, "metal_nut", "test"),
    )


@pytest.fixture(scope="session")
def small_config(synth_root):
    from helpers import Config

    return Config(
        dataset_path=str(synth_root),
        backbone="mobilenet_v2",
        input_size=128,
        resize=128,
        coreset_ratio=0.25,
        batch_size=8,
        device="cpu",
    )


@pytest.fixture(scope="session")
def fitted(small_config, samples):
    from helpers import PatchCore

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PatchCore(small_config).fit(samples[0])


@pytest.fixture(scope="session")
def test_prediction(fitted, samples):
    return fitted.predict(samples[1])
