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
