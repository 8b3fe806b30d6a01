import json

import pytest

from helpers import Config, ConfigError
from helpers.core.backbones import BACKBONES


def test_defaults_follow_the_official_code():
    c = Config()
    assert c.backbone == "wide_resnet50_2"
    assert c.layers == ["layer2", "layer3"]
    assert (c.input_size, c.resize) == (224, 256)
    assert (c.pretrain_embed_dim, c.target_embed_dim) == (1024, 1024)
    assert (c.coreset_ratio, c.coreset_projection_dim, c.patch_size, c.sigma) == (0.1, 128, 3, 4.0)


def test_backbone_defaults_fill_only_unset_fields():
    c = Config(backbone="mobilenet_v2")
    spec = BACKBONES["mobilenet_v2"]
    assert c.layers == list(spec.default_layers)
    assert c.input_size == spec.defaults["input_size"]
    c2 = Config(
        backbone="mobilenet_v2", input_size=160, resize=160, layers="features.6,features.13"
    )
    assert (c2.input_size, c2.layers) == (160, ["features.6", "features.13"])


@pytest.mark.parametrize(
    "field,value,words",
    [
        ("coreset_ratio", 0, "(0, 1]"),
        ("coreset_ratio", 1.5, "(0, 1]"),
        ("coreset_ratio", -0.1, "(0, 1]"),
        ("backbone", "vgg16", "wide_resnet50_2"),
        ("layers", ["layer9"], "layer2"),
        ("input_size", 225, "multiple of 8"),
        ("batch_size", 0, "batch_size"),
        ("sigma", -1.0, "sigma"),
        ("false_alarm_rate", 0, "(0, 1)"),
        ("false_alarm_rate", 1.0, "(0, 1)"),
        ("distance", "manhattan", "cosine"),
        ("device", "tpu", "cuda"),
        ("resize", 100, "input_size"),
        ("patch_size", 2, "odd"),
        ("num_neighbors", 0, "num_neighbors"),
        ("clahe_clip_limit", 0, "clahe_clip_limit"),
        ("knn_backend", "annoy", "faiss"),
    ],
)
def test_bad_values_name_the_field_and_allowed_values(field, value, words):
    with pytest.raises(ConfigError) as err:
        Config(**{field: value})
    assert field in str(err.value) and words in str(err.value)


def test_hash_tracks_artifact_fields_only():
    a = Config(backbone="mobilenet_v2")
    assert a.hash() == Config(backbone="mobilenet_v2", batch_size=3, device="cpu").hash()
    assert a.hash() != Config(backbone="mobilenet_v2", coreset_ratio=0.2).hash()
    assert a.hash() != Config(backbone="mobilenet_v2", clahe=True).hash()
    assert len(a.hash()) == 12


def test_json_round_trip():
    c = Config(backbone="mobilenet_v2", clahe=True, coreset_ratio=0.05, dataset_path="/x")
    data = json.loads(json.dumps({**c.to_dict(), "config_hash": c.hash()}))
    assert Config.from_dict(data) == c  # a stored config_hash is ignored


def test_unknown_field_is_refused():
    with pytest.raises(ConfigError, match="coreset_ration"):
        Config.from_dict({"coreset_ration": 0.1})


def test_differences_lists_changed_artifact_fields():
    a = Config(backbone="mobilenet_v2")
    b = Config(backbone="mobilenet_v2", input_size=160, resize=160)
    diff = a.differences(b.to_dict())
    assert set(diff) == {"input_size", "resize"}


def test_describe_names_where_each_value_came_from():
    cfg = Config(backbone="mobilenet_v2", coreset_ratio=0.2, sigma=4.0)
    src = cfg.sources()
    assert src["coreset_ratio"] == "set" and src["sigma"] == "set"  # set, even to a default
    assert src["distance"] == "backbone default (mobilenet_v2)"
    assert src["layers"] == "backbone default (mobilenet_v2)"
    assert src["batch_size"] == "field default" and src["backbone"] == "set"
    assert Config().sources()["sigma"] == "fallback default"
    table = cfg.describe()
    for name, value in cfg.to_dict().items():
        assert name in table and repr(value) in table
    assert table.count("\n") == len(cfg.to_dict()) + 1


def test_replace_keeps_the_sources_of_unchanged_fields():
    cfg = Config(backbone="mobilenet_v2").replace(batch_size=8)
    assert cfg.sources()["distance"] == "backbone default (mobilenet_v2)"
    assert cfg.sources()["batch_size"] == "set"
    assert Config.from_dict(cfg.to_dict()).sources()["distance"] == "set"  # a saved config


def test_sources_do_not_change_equality_hash_or_dict():
    a, b = (
        Config(backbone="mobilenet_v2"),
        Config.from_dict(Config(backbone="mobilenet_v2").to_dict()),
    )
    assert a == b and a.hash() == b.hash() and "_sources" not in a.to_dict()


def test_coreset_size_is_the_ratio_capped_by_max_size():
    c = Config(backbone="resnet18", coreset_ratio=0.1)
    assert c.coreset_max_size == 0  # the paper's ResNets: no cap
    assert c.coreset_size(100_000) == 10_000 and c.coreset_size(5) == 1
    capped = c.replace(coreset_max_size=4000)
    assert capped.coreset_size(100_000) == 4000 and capped.coreset_size(20_000) == 2000
    assert capped.hash() != c.hash()  # a different bank, a different artifact
    m = Config(backbone="mobilenet_v2")
    assert m.coreset_max_size == 16384 and m.sources()["coreset_max_size"].startswith("backbone")
    with pytest.raises(ConfigError, match="coreset_max_size"):
        Config(backbone="mobilenet_v2", coreset_max_size=-1)


@pytest.mark.parametrize(
    "first, then, set_fields",
    [
        ("mobilenet_v2", "resnet18", {}),
        ("wide_resnet50_2", "mobilenet_v2", {}),
        ("mobilenet_v2", "wide_resnet50_2", {"coreset_ratio": 0.05, "sigma": 2.0}),
        ("resnet18", "mobilenet_v2", {"seed": 3, "sigma": 2.0}),
    ],
)
def test_replace_across_backbones_equals_a_fresh_config(first, then, set_fields):
    """The backbone's defaults were written into the fields, so switching backbones kept the old
    backbone's values (and could fail validation); now only fields that were set survive."""
    moved = Config(backbone=first, **set_fields).replace(backbone=then)
    fresh = Config(backbone=then, **set_fields)
    assert moved.to_dict() == fresh.to_dict() and moved.hash() == fresh.hash()
    assert moved.sources() == fresh.sources()


def test_balance_taps_default_follows_the_embedding_and_bad_values_are_refused():
    from helpers import Config
    from helpers.core.config import ConfigError

    assert Config(backbone="mobilenet_v2").balance_taps  # natural embedding: balanced
    assert not Config(backbone="wide_resnet50_2").balance_taps  # the paper's pooled 1024-d
    pooled = Config(backbone="mobilenet_v2", pretrain_embed_dim=1024, target_embed_dim=1024)
    assert not pooled.balance_taps
    assert Config(backbone="mobilenet_v2").replace(target_embed_dim=512).balance_taps is False
    with pytest.raises(ConfigError, match="balance_taps=True.*target_embed_dim=1024"):
        Config(backbone="mobilenet_v2", target_embed_dim=1024, balance_taps=True)
    with pytest.raises(ConfigError, match="balance_taps='yes'"):
        Config(backbone="mobilenet_v2", balance_taps="yes")
