"""The papermill main job: parameters, refusals, metrics.json, resume, determinism."""

from __future__ import annotations

import ast
import dataclasses
import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from _nbrun import THREADS, ci_run

from helpers import Config
from helpers.run.parameters import (
    COMMON_PARAMETERS,
    NOTEBOOK_PARAMETERS,
    PRESETS,
    config_from_params,
    known_parameters,
    parse_value,
)
from helpers.tools import pipeline
from helpers.tools.pipeline import NOTEBOOKS, PipelineError, run_pipeline

ROOT = Path(__file__).resolve().parent.parent
NUMBERS = (
    "image_auroc",
    "pixel_auroc",
    "aupro",
    "f1_threshold",
    "f1",
    "per_defect",
    "n_train",
    "n_test",
)


@pytest.fixture(scope="module")
def ci(tmp_path_factory) -> Path:
    return ci_run(str(tmp_path_factory.getbasetemp()))


def test_parse_value():
    assert parse_value("0.1") == 0.1 and parse_value("8") == 8
    assert parse_value("true") is True and parse_value("False") is False
    assert parse_value("None") is None and parse_value("null") is None
    assert parse_value("[0.05, 0.1]") == [0.05, 0.1]
    assert (
        parse_value("mobilenet_v2") == "mobilenet_v2" and parse_value("features.6") == "features.6"
    )


def test_every_config_field_is_a_notebook_parameter():
    known = known_parameters()
    missing = {f for f in Config().to_dict()} - set(known)
    assert not missing and "run_dir" in known


def test_notebook_parameters_are_declared_not_parsed_from_notebooks():
    """-p names are validated against Config + NOTEBOOK_PARAMETERS (no notebook parsing at run
    time); what papermill finds in each parameters cell is a subset of those, with their
    defaults."""
    import papermill

    known = known_parameters()
    for nb in pipeline.NOTEBOOKS:
        found = papermill.inspect_notebook(str(pipeline.notebook_dir() / nb))
        assert set(COMMON_PARAMETERS) <= set(found) <= set(known), nb
        for name, info in found.items():
            value = ast.literal_eval(info["default"])
            if name in NOTEBOOK_PARAMETERS:
                assert value == NOTEBOOK_PARAMETERS[name], (nb, name)
            else:  # "" means None for the optional Config fields
                assert config_from_params({name: value}) == Config(), (nb, name)


# One non-default, valid value per Config field: a new field must be added here (and so is
# checked to be settable from a notebook's variables, as papermill's -p sets it).
OTHER_VALUES = {
    "dataset_path": "/data/mvtec",
    "category": "screw",
    "backbone": "mobilenet_v2",
    "weights": "",
    "layers": ["features.6", "features.13"],
    "input_size": 192,
    "resize": 0,
    "patch_size": 5,
    "pretrain_embed_dim": 256,
    "target_embed_dim": 128,
    "balance_taps": False,
    "coreset_ratio": 0.2,
    "coreset_max_size": 5000,
    "coreset_projection_dim": 64,
    "coreset_start_points": 3,
    "train_rotations": 4,
    "num_neighbors": 1,
    "distance": "cosine",
    "cosine_floor": 0.3,
    "sigma": 2,
    "false_alarm_rate": 0.01,
    "clahe": True,
    "clahe_clip_limit": 3.0,
    "clahe_tile_grid": 4,
    "batch_size": 4,
    "device": "cpu",
    "precision": "fp32",
    "knn_backend": "faiss",
    "knn_memory_mb": 64,
    "num_workers": 0,
    "skip_bad_images": True,
    "seed": 7,
}


def test_every_config_field_can_be_set_from_a_notebooks_variables():
    assert set(OTHER_VALUES) == {f.name for f in dataclasses.fields(Config)}
    for name, value in OTHER_VALUES.items():
        params = {"backbone": "mobilenet_v2", name: value}
        cfg = config_from_params(params)
        expected = None if value == "" else value
        assert getattr(cfg, name) == expected, name
        assert cfg.sources()[name] == "set", name
        pipeline._check_names({name: value})  # the pipeline accepts it as -p


def test_notebook_parameters_reach_run_params(tmp_path):
    from helpers.run.run import Run

    run = Run.from_params(
        {"run_dir": str(tmp_path), "n_examples": 7, "timing_repeats": 3, "seed": 2},
        verbose=False,
    )
    assert run.params.n_examples == 7 and run.params.timing_repeats == 3
    assert run.params.interactive is True  # not given: its declared default
    assert run.config.seed == 2
    with pytest.raises(ValueError, match="n_exampels"):
        Run(tmp_path, Config(), params={"n_exampels": 1}, verbose=False)


def test_unknown_parameter_and_bad_values_fail_before_running(tmp_path):
    with pytest.raises(PipelineError, match="unknown parameter"):
        run_pipeline(tmp_path / "a", params={"coreset_rato": 0.1})
    with pytest.raises(PipelineError, match="coreset_ratio"):
        run_pipeline(tmp_path / "b", params={"coreset_ratio": 2.0})
    with pytest.raises(PipelineError, match="--out"):
        run_pipeline(tmp_path / "c", params={"run_dir": "x"})
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_preflight_prints_the_whole_data_error_naming_the_path(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert pipeline.main(["--data", str(missing), "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert str(missing) in err and "train/good" in err  # the path at fault and the layout
    empty = tmp_path / "mvtec" / "metal_nut"
    (empty / "train" / "good").mkdir(parents=True)
    (empty / "test" / "good").mkdir(parents=True)
    with pytest.raises(PipelineError, match=r"data: .*train.good"):
        run_pipeline(tmp_path / "r2", data=str(tmp_path / "mvtec"))
    assert not (tmp_path / "r").exists() and not (tmp_path / "r2").exists()


def test_preflight_refuses_a_fit_larger_than_free_memory_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr("helpers.core.training.available_ram", lambda: 2 << 30)
    with pytest.raises(PipelineError) as err:
        run_pipeline(
            tmp_path / "big",
            params={"backbone": "mobilenet_v2", "synthetic_n_train": 4000, "train_rotations": 8},
        )
    msg = str(err.value)
    assert "\n" not in msg and "GiB of RAM" in msg and "2.0 GiB is free" in msg
    assert "train_rotations (now 8)" in msg
    assert not (tmp_path / "big").exists()


def test_a_dead_kernel_is_reported_with_its_likely_cause(tmp_path, monkeypatch):
    import papermill

    class DeadKernelError(RuntimeError):
        pass

    def die(*_, **__):
        raise DeadKernelError("Kernel died")

    monkeypatch.setattr(papermill, "execute_notebook", die)
    out = tmp_path / "run"
    with pytest.raises(PipelineError) as err:
        run_pipeline(out, params=dict(PRESETS["ci"]))
    msg = str(err.value)
    assert "kernel running 01_dataset_exploration_clahe.ipynb died" in msg
    assert "memory" in msg and str(out) in msg and "--resume" in msg
    state = json.loads((out / "run.json").read_text())
    assert state["notebooks"][NOTEBOOKS[0]]["status"] == "failed"


def test_existing_run_folder_is_never_overwritten_without_the_flag(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text("{}")
    (out / "metrics.json").write_text('{"image_auroc": 0.9}')
    with pytest.raises(PipelineError, match="--overwrite"):
        run_pipeline(out, params={"backbone": "mobilenet_v2"})
    assert pipeline.main(["--out", str(out), "-p", "backbone", "mobilenet_v2"]) == 1
    assert "--resume" in capsys.readouterr().err
    assert json.loads((out / "metrics.json").read_text()) == {"image_auroc": 0.9}
    with pytest.raises(PipelineError, match="choose one"):
        run_pipeline(out, overwrite=True, resume=True)


def test_overwrite_refuses_a_folder_it_did_not_make(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(PipelineError, match="not a run folder"):
        run_pipeline(out, overwrite=True)
    assert (out / "thesis.tex").read_text() == "precious"


def test_makefile_demo_and_run_use_the_pipeline():
    text = (ROOT / "Makefile").read_text()
    demo = text[text.index("\ndemo:") :].split("\n\n")[0]
    run = text[text.index("\nrun:") :].split("\n\n")[0]
    assert "-m helpers demo --out runs/demo" in demo
    assert "-m helpers run" in run and "$(DATA)" in run and "$(ARGS)" in run


def test_main_job_writes_metrics_figures_and_notebooks(ci):
    m = json.loads((ci / "metrics.json").read_text())
    for key in (
        "image_auroc",
        "pixel_auroc",
        "aupro",
        "f1_threshold",
        "per_defect",
        "n_train",
        "n_test",
        "timings",
        "config",
        "versions",
    ):
        assert key in m, key
    # the CI preset's set is tiny (8 training and 11 test images of 128 px) and hard (faint defects,
    # varying light: the lessons' set), so this is a sanity check, not an accuracy benchmark
    assert m["image_auroc"] >= 0.65, "above chance (0.5) on the synthetic set"
    for key in ("pixel_auroc", "aupro"):
        assert 0.5 < m[key] <= 1
    assert set(m["per_defect"]) == {"bent", "color", "flip", "scratch"}
    assert all(v is None or 0 <= v <= 1 for v in m["per_defect"].values())
    assert m["n_train"] == PRESETS["ci"]["synthetic_n_train"] and m["n_test"] == 3 + 4 * 2
    t = m["timings"]
    assert (
        t["device"] == "cpu"
        and t["batch_size"] > 0
        and t["fit_s"] > 0
        and t["infer_ms_per_image"] > 0
    )
    assert m["config"]["backbone"] == "mobilenet_v2" and set(m["config"]) == set(Config().to_dict())
    assert {"torch", "torchvision", "numpy", "python"} <= set(m["versions"])
    figures = sorted(p.name for p in (ci / "figures").glob("*.png"))
    assert len(figures) >= 15 and {f[:2] for f in figures} == {"01", "02", "03", "04", "05"}
    assert sorted(p.name for p in (ci / "notebooks").glob("*.ipynb")) == sorted(NOTEBOOKS)
    state = json.loads((ci / "run.json").read_text())
    assert all(state["notebooks"][nb]["status"] == "done" for nb in NOTEBOOKS)


def test_resume_recomputes_only_what_is_missing(ci, tmp_path):
    out = tmp_path / "resumed"
    shutil.copytree(ci, out)
    (out / "metrics.json").unlink()
    next((out / "artifacts").glob("predictions-*.safetensors")).unlink()
    (out / "artifacts" / "events.jsonl").unlink()
    before = {nb: (out / "notebooks" / nb).stat().st_mtime_ns for nb in NOTEBOOKS}
    logs = []
    run_pipeline(out, params=dict(PRESETS["ci"]), resume=True, threads=THREADS, log=logs.append)
    assert any("resuming" in line and NOTEBOOKS[3] in line for line in logs)
    after = {nb: (out / "notebooks" / nb).stat().st_mtime_ns for nb in NOTEBOOKS}
    assert [before[nb] == after[nb] for nb in NOTEBOOKS] == [True, True, True, False, False, False]
    events = [
        json.loads(line) for line in (out / "artifacts" / "events.jsonl").read_text().splitlines()
    ]
    actions = {(e["stage"], e["action"]) for e in events}
    assert ("predictions", "computed") in actions and ("bank", "loaded") in actions
    assert not any(e["action"] == "computed" and e["stage"] in ("features", "bank") for e in events)
    old, new = (json.loads((d / "metrics.json").read_text()) for d in (ci, out))
    assert {k: new[k] for k in NUMBERS} == {k: old[k] for k in NUMBERS}
    # everything finished: a second resume has nothing to do
    logs.clear()
    run_pipeline(out, params=dict(PRESETS["ci"]), resume=True, threads=THREADS, log=logs.append)
    assert any("nothing to resume" in line for line in logs)


def test_same_config_twice_gives_identical_metrics(ci, tmp_path):
    """The notebooks' computation repeated from scratch in a fresh folder (through the same
    helpers.run.run calls the notebooks make, without the kernels) gives the same numbers."""
    from helpers.run.run import Run

    params = dict(known_parameters())
    params.update(PRESETS["ci"], run_dir=str(tmp_path / "again"))
    run = Run.from_params(params, verbose=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)  # as in the kernels: float sums depend on the thread count
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pred = run.predictions()
            fresh = run.write_metrics(run.evaluate(pred), pred)
    finally:
        torch.set_num_threads(threads)
    computed = [e["stage"] for e in run.cache.events if e["action"] == "computed"]
    assert {"features", "bank", "predictions"} <= set(computed)  # from scratch, each once
    assert len(computed) == len(set(computed))
    old = json.loads((ci / "metrics.json").read_text())
    assert {k: fresh[k] for k in NUMBERS} == {k: old[k] for k in NUMBERS}
    assert fresh["config"] == old["config"]


def test_papermill_does_not_call_checked_parameters_unknown(caplog):
    """Parameters a lesson's cell does not show are not "unknown": the pipeline checked them."""
    import logging

    log = logging.getLogger("papermill")
    with caplog.at_level(logging.WARNING, logger="papermill"):
        log.warning("Passed unknown parameter: %s", "interactive")
        log.warning("Input notebook does not contain a cell with tag 'parameters'")
    assert [r.getMessage() for r in caplog.records] == [
        "Input notebook does not contain a cell with tag 'parameters'"
    ]


def test_the_six_notebooks_run_on_another_category(tmp_path):
    """Nothing in the notebooks may assume metal_nut's defect names: a category named
    differently, with two defect types and no `color`, runs end to end (the real transistor
    category once failed in notebook 01's hue check)."""
    from _nbrun import THREADS

    from helpers.data.synthetic import generate_dataset

    data = tmp_path / "data"
    generate_dataset(
        data,
        "widget",
        size=96,
        n_train=6,
        n_test_good=2,
        n_per_defect=2,
        defects=("bent", "scratch"),
    )
    params = {
        **PRESETS["ci"],
        "category": "widget",
        "input_size": 96,
        "resize": 96,
        "coverage_max_patches": 300,
    }
    metrics = run_pipeline(
        tmp_path / "run", data=data / "widget", params=params, threads=THREADS, log=lambda m: None
    )
    assert set(metrics["per_defect"]) == {"bent", "scratch"} and metrics["n_test"] == 6
    assert metrics["config"]["category"] == "widget"
