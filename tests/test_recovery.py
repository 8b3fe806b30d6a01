"""Advice that leads somewhere: a damaged artifact is computed again (and events.jsonl says
why) instead of failing the same way on every --resume; a damaged bank file is refused in one
line naming the file and the entry."""

from __future__ import annotations

import functools
import json
import warnings

import conftest
import pytest
import torch

from helpers import BankMismatchError, Config, PatchCore
from helpers.core.bank import read_bank, save_bank
from helpers.core.runtime import load_tensors, save_tensors

make_run = functools.partial(conftest.make_run, train_rotations=1)


def last_event(run_dir, stage):
    lines = (run_dir / "artifacts" / "events.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if json.loads(line)["stage"] == stage][-1]


@pytest.fixture()
def quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# ------------------------------------------------------------------ a run's artifacts
def test_a_bank_holding_nan_is_built_again_not_failed_on_every_resume(tmp_path, quiet):
    run = make_run(tmp_path)
    good = run.model().memory_bank.clone()
    path = run.path("bank")
    tensors, meta = load_tensors(path)
    bank = tensors["memory_bank"].clone()
    bank[0, 0] = float("nan")
    meta.pop("checksum")  # a NaN the checksum does not catch: written so by a bad fit
    save_tensors(path, {"memory_bank": bank}, meta)
    assert run.is_cached("bank")  # the header still matches...
    again = make_run(tmp_path)
    model = again.model()  # ...but the values cannot be used: built again
    assert torch.equal(model.memory_bank, good)
    event = last_event(tmp_path, "bank")
    assert event["action"] == "computed" and "NaN" in event["reason"]


def test_a_bank_damaged_after_writing_is_caught_by_its_checksum(tmp_path, quiet):
    run = make_run(tmp_path)
    run.model()
    path = run.path("bank")
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # one bit of the last value
    path.write_bytes(bytes(data))
    with pytest.raises(BankMismatchError, match="checksum"):
        PatchCore.load(path)
    make_run(tmp_path).model()
    assert "checksum" in last_event(tmp_path, "bank")["reason"]


def test_a_cut_short_feature_file_is_recomputed_not_an_index_error(tmp_path, quiet):
    run = make_run(tmp_path, pretrain_embed_dim=256, target_embed_dim=256)
    feats = run.features()
    want = feats.sample(7)
    feats.close()
    spill = run.stages.spill_path()
    size = spill.stat().st_size
    with open(spill, "r+b") as fh:  # cut at a row boundary: a whole number of rows, too few
        fh.truncate(size - 256 * 4 * 10)
    again = make_run(tmp_path, pretrain_embed_dim=256, target_embed_dim=256)
    assert not again.is_cached("features")
    feats = again.features()
    assert torch.equal(feats.sample(7), want)
    feats.close()
    assert "cut short" in last_event(tmp_path, "features")["reason"]
    assert spill.stat().st_size == size


def test_a_damaged_predictions_file_is_recomputed(tmp_path, quiet):
    run = make_run(tmp_path)
    scores = run.predictions().scores
    path = run.path("predictions")
    path.write_bytes(path.read_bytes()[:-100])  # header intact, data cut short
    pred = make_run(tmp_path).predictions()
    assert (pred.scores == scores).all()
    assert last_event(tmp_path, "predictions")["reason"].startswith("unreadable")


# ------------------------------------------------------------------ the bank file (API)
def _bank(tmp_path):
    cfg = Config(backbone="mobilenet_v2", input_size=64, resize=64)
    path = save_bank(tmp_path / "b.safetensors", torch.randn(5, cfg.embed_dim), cfg, (8, 8), {})
    return cfg, path


def test_load_of_a_folder_names_the_file_to_pass(tmp_path):
    _, path = _bank(tmp_path)
    with pytest.raises(IsADirectoryError) as err:
        PatchCore.load(tmp_path)
    assert f"{tmp_path} is a folder" in str(err.value) and str(path) in str(err.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        PatchCore.load(tmp_path / "nope.safetensors")


def test_the_bank_file_carries_a_checksum_of_its_values(tmp_path):
    cfg, path = _bank(tmp_path)
    tensors, meta = load_tensors(path)
    assert meta["checksum"].startswith("sha256:")
    save_tensors(path, {"memory_bank": tensors["memory_bank"] * 2}, meta)  # same header
    with pytest.raises(BankMismatchError, match="checksum") as err:
        read_bank(path, cfg)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("entry", ["grid", "info", "versions"])
def test_a_broken_header_entry_is_named(tmp_path, entry):
    _, path = _bank(tmp_path)
    tensors, meta = load_tensors(path)
    meta[entry] = meta[entry][:-1] + ","  # JSON cut short
    save_tensors(path, tensors, meta)
    with pytest.raises(BankMismatchError) as err:
        PatchCore.load(path)
    msg = str(err.value)
    assert str(path) in msg and repr(entry) in msg and "\n" not in msg


def test_a_fit_whose_features_are_not_finite_is_refused(tmp_path, samples):
    model = PatchCore(Config(backbone="mobilenet_v2", input_size=64, resize=64, device="cpu"))
    real = model.embed

    def poisoned(x):
        out = real(x)
        out[0, 0, 0, 0] = float("nan")
        return out

    model.embed = poisoned
    with pytest.raises(ValueError, match="precision='fp32'"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit([s.path for s in samples[0][:2]])


def test_features_that_are_not_finite_are_never_cached(tmp_path, monkeypatch, quiet):
    """Otherwise the advice (precision='fp32', then --resume) would load the same NaN features:
    precision does not change the features' hash."""
    real = PatchCore.embed

    def poisoned(self, x):
        out = real(self, x)
        out[:, 0, 0, 0] = float("inf")
        return out

    monkeypatch.setattr(PatchCore, "embed", poisoned)
    run = make_run(tmp_path, pretrain_embed_dim=256, target_embed_dim=256)
    with pytest.raises(ValueError, match="nothing is saved"):
        run.features()
    assert not run.path("features").exists() and not run.stages.spill_path().exists()
    assert not list((tmp_path / "artifacts").glob("*.tmp"))
    monkeypatch.setattr(PatchCore, "embed", real)
    assert make_run(tmp_path, pretrain_embed_dim=256, target_embed_dim=256).features().n_images == 4
