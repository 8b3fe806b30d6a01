import cv2
import numpy as np
import pytest
from PIL import Image

from helpers.core.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Geometry,
    ImageReadError,
    Preprocessor,
    apply_clahe,
    load_image,
)
from helpers.data.mvtec import DatasetError, list_samples, load_mask


def test_lists_mvtec_layout(synth_root):
    train = list_samples(synth_root, "metal_nut", "train")
    test = list_samples(synth_root, "metal_nut", "test")
    assert len(train) == 10 and all(s.defect == "good" and s.label == 0 for s in train)
    assert [s.defect for s in test][:4] == ["good"] * 4
    assert sorted({s.defect for s in test}) == ["bent", "color", "flip", "good", "scratch"]
    assert all(s.mask_path is not None and s.mask_path.is_file() for s in test if s.label)


def test_category_folder_itself_is_accepted(synth_root):
    assert len(list_samples(synth_root / "metal_nut", "metal_nut", "train")) == 10


def test_missing_dataset_names_path_and_layout(tmp_path):
    with pytest.raises(DatasetError) as err:
        list_samples(tmp_path / "nowhere", "metal_nut", "train")
    assert "nowhere" in str(err.value) and "train/good" in str(err.value)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DatasetError, match="not a folder"):
        list_samples(tmp_path / "file.txt", "metal_nut", "train")


def test_missing_or_empty_train_good(tmp_path):
    (tmp_path / "metal_nut" / "test" / "good").mkdir(parents=True)
    with pytest.raises(DatasetError, match="train/good"):
        list_samples(tmp_path, "metal_nut", "train")
    (tmp_path / "metal_nut" / "train" / "good").mkdir(parents=True)
    with pytest.raises(DatasetError, match="holds no images"):
        list_samples(tmp_path, "metal_nut", "train")


def test_non_image_files_are_ignored_and_counted(tmp_path):
    good = tmp_path / "metal_nut" / "train" / "good"
    good.mkdir(parents=True)
    cv2.imwrite(str(good / "000.png"), np.zeros((8, 8, 3), np.uint8))
    for junk in (".DS_Store", "Thumbs.db", "notes.txt"):
        (good / junk).write_text("junk")
    with pytest.warns(UserWarning, match="ignored 3 non-image"):
        samples = list_samples(tmp_path, "metal_nut", "train")
    assert [s.path.name for s in samples] == ["000.png"]


def test_missing_masks_and_no_test_good(tmp_path):
    cat = tmp_path / "metal_nut"
    for d in ("train/good", "test/scratch", "ground_truth/scratch"):
        (cat / d).mkdir(parents=True)
    img = np.full((8, 8, 3), 100, np.uint8)
    for name in ("000.png", "001.png"):
        cv2.imwrite(str(cat / "train/good" / name), img)
        cv2.imwrite(str(cat / "test/scratch" / name), img)
    cv2.imwrite(str(cat / "ground_truth/scratch/000_mask.png"), np.full((8, 8), 255, np.uint8))
    with pytest.warns(UserWarning, match="001.png"):
        test = list_samples(tmp_path, "metal_nut", "test")
    assert [s.mask_path is not None for s in test] == [True, False]


def _save(im: Image.Image, path):
    im.save(path)
    return path


def test_image_modes_become_rgb_uint8(tmp_path):
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    out = load_image(_save(Image.fromarray(gray, "L"), tmp_path / "g.png"))
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8 and (out[..., 0] == gray).all()
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    rgba[0, 0, 3] = 0
    out = load_image(_save(Image.fromarray(rgba, "RGBA"), tmp_path / "a.png"))
    assert out.shape == (8, 8, 3) and out[1, 1, 0] == 200 and out[0, 0, 0] == 0
    deep = np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000
    cv2.imwrite(str(tmp_path / "d.png"), deep)
    out = load_image(tmp_path / "d.png")
    assert out.dtype == np.uint8 and out.shape == (8, 8, 3)
    assert out[0, 1, 0] == round(1000 / 257) and out[7, 7, 0] == round(63000 / 257)
    pal = Image.fromarray(np.full((8, 8, 3), (10, 20, 30), np.uint8)).convert(
        "P", palette=Image.ADAPTIVE
    )
    out = load_image(_save(pal, tmp_path / "p.png"))
    assert out.shape == (8, 8, 3) and tuple(out[0, 0]) == (10, 20, 30)
    jpg = load_image(
        _save(Image.fromarray(np.full((16, 12, 3), 128, np.uint8)), tmp_path / "x.jpg")
    )
    assert jpg.shape == (16, 12, 3)


def test_corrupt_and_truncated_files_name_the_file(tmp_path):
    good = tmp_path / "ok.png"
    cv2.imwrite(str(good), np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    data = good.read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    for name in ("trunc.png", "junk.png"):
        with pytest.raises(ImageReadError) as err:
            load_image(tmp_path / name)
        assert name in str(err.value) and "skip_bad_images" in str(err.value)


def test_mask_resized_with_nearest_and_warned(tmp_path):
    m = np.zeros((10, 10), np.uint8)
    m[:5] = 255
    cv2.imwrite(str(tmp_path / "m.png"), m)
    with pytest.warns(UserWarning, match="nearest"):
        out = load_mask(tmp_path / "m.png", (20, 20))
    assert out.shape == (20, 20) and out.dtype == bool and out[:10].all() and not out[10:].any()
    # MVTec 3D-AD marks defects with 253-255
    cv2.imwrite(str(tmp_path / "t.png"), np.where(m > 0, 253, 0).astype(np.uint8))
    assert load_mask(tmp_path / "t.png", (10, 10)).sum() == 50


def test_clahe_raises_local_contrast_on_l_only():
    rng = np.random.default_rng(0)
    img = (100 + rng.integers(0, 20, (64, 64, 1))).astype(np.uint8).repeat(3, axis=2)
    out = apply_clahe(img, clip_limit=4.0, tile_grid=4)
    assert out.shape == img.shape and out.dtype == np.uint8
    l_in = cv2.cvtColor(img, cv2.COLOR_RGB2LAB)[..., 0].std()
    l_out = cv2.cvtColor(out, cv2.COLOR_RGB2LAB)[..., 0].std()
    assert l_out > 1.5 * l_in
    assert np.abs(out.astype(int) - out[..., :1].astype(int)).max() <= 2  # gray stays gray


def test_geometry_resize_crop_and_back():
    g = Geometry.for_shape(300, 400, resize=256, crop=224)
    assert (g.res_h, g.res_w, g.top, g.left) == (256, 341, 16, 58)
    # a map that is hot at one input pixel lands at the matching original pixel
    amap = np.zeros((224, 224), np.float32)
    # original pixel (150, 200) -> input pixel, pixel-centre convention
    y = (150.0 + 0.5) * g.res_h / g.orig_h - 0.5 - g.top
    x = (200.0 + 0.5) * g.res_w / g.orig_w - 0.5 - g.left
    amap[int(round(y)), int(round(x))] = 1.0
    back = g.to_original(amap)
    assert back.shape == (300, 400)
    oy, ox = np.unravel_index(back.argmax(), back.shape)
    assert abs(oy - 150) <= 1 and abs(ox - 200) <= 1


def test_identity_geometry_and_outside_fill():
    g = Geometry.for_shape(64, 64, 64, 64)
    m = np.random.rand(64, 64).astype(np.float32)
    assert np.array_equal(g.to_original(m), m)
    g2 = Geometry.for_shape(64, 64, 80, 64)
    out = g2.to_original(np.ones((64, 64), np.float32) * 5, fill=0.0)
    assert out[0, 0] < 5 and out[32, 32] == pytest.approx(5)


def test_preprocessor_normalises_and_round_trips():
    img = np.random.default_rng(1).integers(0, 255, (100, 120, 3), dtype=np.uint8)
    x, g = Preprocessor(64, 64)(img)
    assert x.shape == (3, 64, 64) and x.dtype.is_floating_point
    assert abs(float(x.mean())) < 3
    back = (x.numpy().transpose(1, 2, 0) * IMAGENET_STD + IMAGENET_MEAN) * 255
    assert np.abs(back - Preprocessor(64, 64).crop_rgb(img)[0]).max() < 0.01
    with pytest.raises(ValueError, match="uint8"):
        Preprocessor(64, 64)(img.astype(np.float32))


def test_8bit_rgb_png_takes_opencvs_decoder_with_pillows_pixels(tmp_path):
    from helpers.core.images import _png_rgb8

    rgb = np.random.default_rng(1).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    with Image.open(tmp_path / "rgb.png") as im:
        assert np.array_equal(_png_rgb8(tmp_path / "rgb.png", im), rgb)  # the fast path
    assert np.array_equal(load_image(tmp_path / "rgb.png"), rgb)
    # 16-bit RGB, a colour key (tRNS) and gray: Pillow's path, as before
    cv2.imwrite(str(tmp_path / "rgb16.png"), (rgb[..., ::-1].astype(np.uint16) * 257))
    Image.fromarray(rgb).save(tmp_path / "key.png", transparency=(0, 0, 0))
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.png")
    for name in ("rgb16.png", "key.png", "gray.png"):
        with Image.open(tmp_path / name) as im:
            assert _png_rgb8(tmp_path / name, im) is None, name
    assert np.array_equal(load_image(tmp_path / "rgb16.png"), rgb)  # 16 bits scaled to 8
    assert np.array_equal(load_image(tmp_path / "gray.png"), np.repeat(rgb[..., :1], 3, axis=2))
