"""helpers.core.training: the fit's training features read back by row."""

import torch

from helpers.core.coreset import Projection
from helpers.core.training import TrainingFeatures


def test_rows_and_sample_come_from_the_full_features():
    full = torch.randn(12, 6)
    proj = Projection(6, 0, 0, 12)
    proj.add(full)
    feats = TrainingFeatures.in_memory(proj, full, (2, 3))
    assert feats.n_images == feats.n_views == 2
    assert feats.n_patches == 12 and feats.per_image == 6 and feats.dim == 6
    assert torch.equal(feats.rows(torch.tensor([3, 0])), full[[3, 0]])
    assert feats.sample(100).shape == (12, 6)
