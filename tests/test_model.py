import json
import warnings

import numpy as np
import pytest
import torch

from helpers import BankMismatchError, PatchCore
from helpers.core.images import load_image
from helpers.evaluation.report import evaluate


def test_end_to_end_on_synthetic_set_is_well_above_chance(test_prediction, samples):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = evaluate(samples[1], test_prediction)
    assert m["image_auroc"] > 0.85
    assert m["pixel_auroc"] > 0.75
    assert 0.3 < m["aupro"] <= 1.0
    assert set(m["per_defect"]) == {"bent", "color", "flip", "scratch"}


def test_prediction_shapes_are_original_pixels(test_prediction, samples, fitted):
    assert len(test_prediction) == len(samples[1])
    assert all(m.shape == (128, 128) and m.dtype == np.float32 for m in test_prediction.maps)
    assert test_prediction.patch_scores.shape == (len(samples[1]), 16, 16)
    assert np.isfinite(test_prediction.scores).all()
    n_patches = 10 * fitted.config.rotations_for(10) * 256
    assert fitted.memory_bank.shape == (int(n_patches * 0.25), fitted.config.embed_dim)


def test_save_load_round_trip_gives_identical_scores(fitted, samples, tmp_path):
    path = fitted.save(tmp_path / "bank.safetensors")
    loaded = PatchCore.load(path, fitted.config)
    a = fitted.predict(samples[1][:5]).scores
    b = loaded.predict(samples[1][:5]).scores
    assert np.array_equal(a, b)
    assert loaded.grid == fitted.grid and loaded.info["n_train"] == 10
    assert not list(tmp_path.glob(".*tmp"))  # no temp file left behind


def test_load_refuses_other_settings_listing_differences(fitted, tmp_path):
    path = fitted.save(tmp_path / "bank.safetensors")
    other = fitted.config.replace(input_size=96, resize=96, layers=["features.3", "features.6"])
    with pytest.raises(BankMismatchError) as err:
        PatchCore.load(path, other)
    text = str(err.value)
    assert "input_size" in text and "layers" in text and "resize" in text
    # runtime fields may differ freely
    PatchCore.load(path, fitted.config.replace(batch_size=2))


def test_load_refuses_tampered_truncated_and_pickle_files(fitted, tmp_path):
    path = fitted.save(tmp_path / "bank.safetensors")
    data = path.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="trunc.safetensors"):
        PatchCore.load(tmp_path / "trunc.safetensors")
    # a pickle disguised as a bank is never unpickled
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    import pickle

    (tmp_path / "evil.safetensors").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(ValueError):
        PatchCore.load(tmp_path / "evil.safetensors")
    assert not marker.exists()
    # a valid safetensors file that is not a bank
    from helpers.core.runtime import save_tensors

    save_tensors(tmp_path / "other.safetensors", {"w": torch.zeros(2, 2)}, {"format": "something"})
    with pytest.raises(BankMismatchError, match="not a PatchCore memory bank"):
        PatchCore.load(tmp_path / "other.safetensors")
    # header edited to claim another format version
    meta = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    meta["__metadata__"]["format_version"] = "99"
    header = json.dumps(meta).encode()
    header += b" " * (-len(header) % 8)
    body = data[8 + int.from_bytes(data[:8], "little") :]
    (tmp_path / "v99.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + body)
    with pytest.raises(BankMismatchError, match="99"):
        PatchCore.load(tmp_path / "v99.safetensors")


def test_defect_pasted_at_known_place_peaks_there_in_original_coordinates(fitted, samples):
    from helpers.core.images import load_image

    img = load_image(samples[0][0].path)
    # a larger, non-square original so the map must undo a resize AND a centre crop
    import cv2

    big = cv2.resize(img, (200, 160))
    cfg = fitted.config.replace(resize=144)  # 160x200 -> 144x180, crop 128 at (8, 26)
    model = PatchCore(cfg)
    model.memory_bank, model.grid = fitted.memory_bank, fitted.grid
    y0, x0 = 60, 110
    big[y0 : y0 + 12, x0 : x0 + 12] = (255, 0, 255)
    pred = model.predict([big])
    amap = pred.maps[0]
    assert amap.shape == (160, 200)
    py, px = np.unravel_index(amap.argmax(), amap.shape)
    assert y0 - 6 <= py < y0 + 18 and x0 - 6 <= px < x0 + 18


def test_num_neighbors_one_is_plain_max(fitted, samples):
    plain = PatchCore(fitted.config.replace(num_neighbors=1))
    plain.memory_bank = fitted.memory_bank
    pred = plain.predict(samples[1][:4])
    assert np.allclose(pred.scores, pred.patch_scores.reshape(4, -1).max(1))


def _brute_distances(a: torch.Tensor, b: torch.Tensor, config, bank: torch.Tensor) -> torch.Tensor:
    """All pairwise distances in float64, written out from the definitions (not core.knn)."""
    if config.distance == "l2":
        return torch.cdist(a, b)
    floor = config.cosine_floor * float(bank.norm(dim=1).median())
    pa = a / (a.norm(dim=1, keepdim=True) + floor)
    pb = b / (b.norm(dim=1, keepdim=True) + floor)
    return torch.cdist(pa, pb) ** 2 / 2  # = 1 - cos when the floor is 0


@pytest.mark.parametrize("scoring", [{}, {"distance": "l2"}, {"cosine_floor": 0.0}])
def test_eq7_reweighting_against_brute_force(fitted, samples, scoring):
    model = PatchCore(fitted.config.replace(**scoring))
    model.memory_bank = fitted.memory_bank
    emb = model.embed(model.preprocess(np.asarray(load_image(samples[1][-1].path)))[0][None])
    scores, grid = model.score_embeddings(emb)
    bank = model.memory_bank.double()
    flat = emb.reshape(-1, emb.shape[-1]).double()
    d = _brute_distances(flat, bank, model.config, bank)
    nn_d, nn_i = d.min(1)
    torch.testing.assert_close(grid.flatten().double(), nn_d, atol=1e-4, rtol=1e-4)
    p = int(nn_d.argmax())
    m_star = bank[nn_i[p]]
    support = torch.topk(
        _brute_distances(m_star[None], bank, model.config, bank)[0], 9, largest=False
    ).indices
    dist = _brute_distances(flat[p][None], bank[support], model.config, bank)[0]
    w = 1 - torch.exp(dist[0]) / torch.exp(dist).sum()
    assert float(scores[0]) == pytest.approx(float(w * nn_d[p]), rel=1e-4)


def test_inputs_are_validated_with_clear_messages(fitted):
    with pytest.raises(ValueError, match="uint8"):
        fitted.predict([np.zeros((32, 32, 3), np.float32)])
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        fitted.predict([np.zeros((32, 32, 5), np.uint8)])
    with pytest.raises(ValueError, match="input_size"):
        fitted.predict(torch.zeros(1, 3, 64, 64))
    with pytest.raises(TypeError, match="file path"):
        fitted.predict([123])
    with pytest.raises(ValueError, match="no images"):
        fitted.predict([])
    with pytest.raises(RuntimeError, match="fit"):
        PatchCore(fitted.config).predict([np.zeros((32, 32, 3), np.uint8)])


def test_tensor_and_array_inputs_agree_with_paths(fitted, samples):
    from helpers.core.images import load_image

    paths = [s.path for s in samples[1][:3]]
    arrays = [load_image(p) for p in paths]
    tensors = torch.stack([fitted.preprocess(a)[0] for a in arrays])
    a = fitted.predict(paths).scores
    assert np.allclose(a, fitted.predict(arrays).scores)
    assert np.allclose(a, fitted.predict(tensors).scores, atol=1e-5)


@pytest.mark.parametrize("dims", [(1024, 1024), (0, 0)], ids=["1024d-spilled", "natural-128d"])
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_streaming_fit_equals_all_features_in_memory(small_config, samples, tmp_path, dims):
    cfg = small_config.replace(
        pretrain_embed_dim=dims[0], target_embed_dim=dims[1], train_rotations=2
    )
    streamed = PatchCore(cfg).fit(samples[0][:6], spill_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []  # the temporary feature file is gone
    assert streamed.info["n_views"] == 12 and streamed.info["n_train"] == 6
    ref = PatchCore(cfg)
    ref.tap_weights = streamed.tap_weights  # balance_taps: the fit's weights, from its 1st batch
    assert (streamed.tap_weights is not None) == cfg.balance_taps
    feats = torch.cat(
        [
            b.embeddings.reshape(-1, cfg.embed_dim)
            for b in ref.embed_images(samples[0][:6], rotations=2)
        ]
    )
    ref.grid = streamed.grid
    ref.select_bank(feats)
    assert torch.equal(streamed.coreset_indices, ref.coreset_indices)
    assert torch.equal(streamed.memory_bank, ref.memory_bank)
    assert torch.equal(streamed.memory_bank, feats[ref.coreset_indices])
    test = samples[1][:3]
    assert np.array_equal(
        streamed.predict(test, maps=False).scores, ref.predict(test, maps=False).scores
    )


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_natural_embedding_is_the_3x3_channel_mean(small_config, samples):
    cfg = small_config.replace(
        pretrain_embed_dim=0, target_embed_dim=0, layers=["features.6", "features.13"]
    )
    assert cfg.embed_dim == 32 + 96
    model = PatchCore(cfg)
    x, _ = model.preprocess(load_image(samples[0][0].path))
    emb = model.embed(x[None])[0]
    taps = model.extractor.body(x[None])
    a = torch.nn.functional.avg_pool2d(taps["features.6"], 3, 1, 1)[0].permute(1, 2, 0)
    assert torch.allclose(emb[..., :32], a, atol=1e-5)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_coreset_max_size_keeps_the_first_greedy_picks(small_config, samples):
    """A cap on the bank is the greedy selection stopped early: the capped bank is the first
    ``coreset_max_size`` picks of the uncapped one, whatever the ratio asks for."""
    ref = PatchCore(small_config.replace(coreset_max_size=0))
    feats = torch.cat([b.embeddings.flatten(0, 2) for b in ref.embed_images(samples[0][:4])])
    ref.grid = (1, feats.shape[0])
    full = ref.select_bank(feats)
    assert len(full) == int(feats.shape[0] * small_config.coreset_ratio)
    capped = PatchCore(small_config.replace(coreset_max_size=len(full) // 3))
    capped.grid = ref.grid
    kept = capped.select_bank(feats)
    assert len(kept) == len(full) // 3 and torch.equal(kept, full[: len(kept)])
    assert torch.equal(capped.memory_bank, feats[kept])


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_balanced_tap_weights_come_from_images_spread_over_the_training_set(
    small_config, samples, monkeypatch
):
    """Measured on at most TAP_SAMPLE images, evenly spaced (not the first batch): with 2 of 6,
    images 0 and 3, whose patches then have the same mean |block|^2 in every tap."""
    from helpers.core import training

    monkeypatch.setattr(training, "TAP_SAMPLE", 2)
    # images 0 and 3 of 6, two views each, three patches a view: views 0, 1, 6, 7
    assert training.tap_sample_rows(6, 2, 3).tolist() == [0, 1, 2, 3, 4, 5, 18, 19, 20, 21, 22, 23]
    cfg = small_config.replace(train_rotations=1)
    assert cfg.balance_taps
    model = PatchCore(cfg).fit(samples[0][:6])
    train = samples[0][:6]
    emb = torch.cat([b.embeddings for b in model.embed_images([train[0], train[3]])])  # weighed
    sq = [
        b.pow(2).sum(1).mean().item()
        for b in emb.reshape(-1, cfg.embed_dim).double().split(cfg.tap_dims, 1)
    ]
    assert max(sq) - min(sq) < 1e-4 * max(sq)
    first = torch.cat([b.embeddings for b in model.embed_images(train[:2])])  # not these
    sq = [
        b.pow(2).sum(1).mean().item()
        for b in first.reshape(-1, cfg.embed_dim).double().split(cfg.tap_dims, 1)
    ]
    assert max(sq) - min(sq) > 1e-3 * max(sq)


def test_balanced_taps_weigh_the_training_patches_alike_and_travel_with_the_bank(
    fitted, samples, tmp_path
):
    cfg = fitted.config
    assert cfg.balance_taps and len(fitted.tap_weights) == len(cfg.layers)
    # the weights come from the sampled training images: there every tap has the same mean
    # |block|^2 (training.tap_sample; all of them on this small set)
    from helpers.core.training import tap_sample

    train = samples[0]
    sampled = fitted.embed_images(train[tap_sample(len(train))], cfg.rotations_for(len(train)))
    rows = torch.cat([b.embeddings for b in sampled]).reshape(-1, cfg.embed_dim).double()
    blocks = rows.split(cfg.tap_dims, dim=1)
    sq = [b.pow(2).sum(1).mean().item() for b in blocks]
    assert max(sq) - min(sq) < 1e-4 * max(sq)
    # a bank whose header lost its tap weights is refused, naming the file
    path = fitted.save(tmp_path / "bank.safetensors")
    from safetensors.torch import load_file, safe_open, save_file

    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
    del meta["tap_weights"]
    bare = tmp_path / "bare.safetensors"
    save_file(load_file(str(path)), str(bare), metadata=meta)
    with pytest.raises(BankMismatchError, match="bare.safetensors.*tap_weights"):
        PatchCore.load(bare)
    # unbalanced: no weights saved, none loaded
    plain = PatchCore(cfg.replace(balance_taps=False)).fit(samples[0][:4])
    assert plain.tap_weights is None
    again = PatchCore.load(plain.save(tmp_path / "plain.safetensors"))
    assert again.tap_weights is None and not again.config.balance_taps
