"""helpers.core.bank: the memory-bank file on its own."""

import pytest
import torch

from helpers import Config
from helpers.core.bank import BankMismatchError, read_bank, save_bank


def test_round_trip_and_refusal_of_other_settings(tmp_path):
    cfg = Config(backbone="mobilenet_v2", input_size=64, resize=64)
    bank = torch.randn(5, cfg.embed_dim)
    path = save_bank(tmp_path / "b.safetensors", bank, cfg, (8, 8), {"fit_s": 1.0})
    got_cfg, got, meta = read_bank(path, cfg, batch_size=4)
    assert torch.equal(got, bank) and got_cfg.batch_size == 4 and meta["grid"] == "[8, 8]"
    with pytest.raises(BankMismatchError, match="input_size"):
        read_bank(path, cfg.replace(input_size=96, resize=96))
