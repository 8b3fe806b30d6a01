"""helpers.core.images: what users pass as images becomes batches of views."""

import numpy as np
import pytest
import torch

from helpers import Config
from helpers.core.images import Preprocessor, as_list, image_batches, load_input, rotate_image


def test_rotations_make_views_of_each_image_in_order():
    cfg = Config(backbone="mobilenet_v2", input_size=64, resize=64, batch_size=2)
    imgs = [np.full((80, 80, 3), i * 40, np.uint8) for i in range(3)]
    batches = list(image_batches(imgs, cfg, Preprocessor.from_config(cfg), rotations=2))
    assert [b[2] for b in batches] == [[0, 0, 1, 1], [2, 2]]
    assert batches[0][0].shape == (4, 3, 64, 64)


def test_tensor_input_keeps_its_size_and_gray_arrays_become_rgb():
    cfg = Config(backbone="mobilenet_v2", input_size=64, resize=64, batch_size=4)
    ((x, geoms, idx),) = image_batches(torch.zeros(3, 3, 64, 64), cfg, None)
    assert idx == [0, 1, 2] and geoms[0].crop == 64
    assert load_input(np.zeros((5, 6), np.uint8)).shape == (5, 6, 3)
    with pytest.raises(ValueError, match="uint8"):
        load_input(np.zeros((5, 6, 3), np.float32))
    with pytest.raises(ValueError, match="input_size"):
        list(image_batches(torch.zeros(1, 3, 32, 32), cfg, None))


def test_as_list_and_rotate_image():
    assert len(as_list(np.zeros((2, 4, 4, 3), np.uint8))) == 2 and as_list("a.png") == ["a.png"]
    img = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    assert np.array_equal(rotate_image(img, 0.0), img)
