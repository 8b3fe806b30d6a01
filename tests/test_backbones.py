import urllib.error

import pytest
import torch

from helpers.core.backbones import (
    BACKBONES,
    WeightsUnavailableError,
    load_backbone,
    seed_offline_weights,
)


def test_registry_taps_exist_with_the_stated_strides():
    import torchvision
    from torchvision.models.feature_extraction import create_feature_extractor

    for name in ("mobilenet_v2", "resnet18"):
        spec = BACKBONES[name]
        net = torchvision.models.get_model(name, weights=None).eval()
        body = create_feature_extractor(net, return_nodes=list(spec.layers))
        out = body(torch.zeros(1, 3, 64, 64))
        for layer, stride in spec.layers.items():
            assert out[layer].shape[-1] == 64 // stride, (name, layer)


def test_offline_mobilenet_weights_load_through_torchvision():
    path = seed_offline_weights(verbose=False)
    assert path is not None and path.is_file()
    net = load_backbone("mobilenet_v2", "IMAGENET1K_V1")
    # pretrained, not random: the first conv of the published file has a known weight scale
    w = net.features[0][0].weight
    assert not w.requires_grad and 0.1 < float(w.abs().mean()) < 1.0
    assert seed_offline_weights(verbose=False) == path  # idempotent


def test_unavailable_weights_give_one_clear_message(monkeypatch):
    import torchvision

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.models, "get_model", refuse)
    with pytest.raises(WeightsUnavailableError) as err:
        load_backbone("wide_resnet50_2", "IMAGENET1K_V1")
    text = str(err.value)
    assert "wide_resnet50_2-95faca4d.pth" in text and "hub" in text and "mobilenet_v2" in text
    assert "go online" in text


def test_random_weights_only_when_asked_and_warned():
    with pytest.warns(UserWarning, match="RANDOM"):
        load_backbone("resnet18", None)
    with pytest.raises(ValueError, match="unknown backbone"):
        load_backbone("vgg", None)


def test_random_weights_are_the_same_network_every_time():
    """weights=None: one fixed random network, so features, bank and test features computed in
    different processes (notebooks 02-04) compare like with like; the global RNG is untouched."""
    import warnings

    import torch

    from helpers.core.backbones import load_backbone

    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a, b = load_backbone("resnet18", None), load_backbone("resnet18", None)
    assert torch.equal(torch.rand(1), expected_next)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
