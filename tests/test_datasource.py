"""helpers.run.parameters.DataSource: the synthetic set or a data folder, on its own."""

from helpers import Config
from helpers.run.parameters import SYNTHETIC_DEFAULTS, DataSource


def test_synthetic_source_is_generated_in_its_folder(tmp_path):
    src = DataSource(
        Config(backbone="mobilenet_v2"),
        tmp_path / "data",
        synthetic=dict(size=64, n_train=2, n_test_good=1, n_per_defect=1),
    )
    assert src.is_synthetic and src.data_id().startswith("synthetic:")
    assert src.root == tmp_path / "data"
    assert len(src.train_samples) == 2 and src.record()["source"] == "synthetic"
    assert set(SYNTHETIC_DEFAULTS) <= set(src.synthetic)


def test_folder_source_is_named_by_its_path_and_category(tmp_path):
    src = DataSource(Config(backbone="mobilenet_v2", dataset_path=str(tmp_path)), tmp_path / "x")
    assert not src.is_synthetic and src.data_id() == f"folder:{tmp_path.resolve()}|metal_nut"
