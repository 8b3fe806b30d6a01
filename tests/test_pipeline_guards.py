"""The main job's refusals, each one line naming the file or parameter and the fix, never a
traceback: the run folder marker, bad paths, parameters, a damaged run.json; and what it clears
before running notebooks again. None of these runs a notebook."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.run.parameters import PRESETS
from helpers.tools import pipeline
from helpers.tools.pipeline import MARKER, PipelineError, run_pipeline

CI = dict(PRESETS["ci"])


def error_line(capsys, argv: list[str]) -> str:
    """main(argv) must fail with exit code 1 and one line on stderr, no traceback."""
    assert pipeline.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "Traceback" not in err, err
    assert "\n" not in err, err
    return err


def made_by_the_tool(out: Path) -> Path:
    """A run folder as the tool leaves it (marker, run.json, artifacts/)."""
    (out / "artifacts").mkdir(parents=True)
    (out / MARKER).write_text("{}")
    (out / "run.json").write_text(json.dumps({"parameters": {}, "notebooks": {}}))
    (out / "metrics.json").write_text('{"image_auroc": 0.9}')
    return out


# ------------------------------------------------------------------ the run folder marker
def test_overwrite_deletes_only_a_folder_the_tool_made(tmp_path, capsys):
    """A folder holding run.json / artifacts / metrics.json but no marker (someone else's, or
    copied by hand) is neither deleted nor resumed."""
    theirs = tmp_path / "theirs"
    (theirs / "artifacts").mkdir(parents=True)
    (theirs / "metrics.json").write_text("{}")
    (theirs / "thesis.tex").write_text("precious")
    for flag in ("--overwrite", "--resume"):
        err = error_line(capsys, ["--out", str(theirs), flag, "--preset", "ci"])
        assert str(theirs) in err and MARKER in err and "choose another --out" in err
    assert (theirs / "thesis.tex").read_text() == "precious"
    assert sorted(p.name for p in theirs.iterdir()) == ["artifacts", "metrics.json", "thesis.tex"]


def test_the_marker_is_written_when_the_tool_makes_the_folder(tmp_path, monkeypatch):
    import papermill

    def stop(*_, **__):
        raise KeyboardInterrupt

    monkeypatch.setattr(papermill, "execute_notebook", stop)
    out = tmp_path / "new" / "run"
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(out, params=CI, log=lambda m: None)
    assert (out / MARKER).is_file()
    state = json.loads((out / "run.json").read_text())
    assert set(state["data"]) == {"train", "test", "masks"}  # what the images were
    # so --overwrite may delete it now
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(out, params=CI, overwrite=True, log=lambda m: None)


def test_overwrite_refuses_when_the_data_lies_inside_the_run_folder(tmp_path):
    from helpers.data.synthetic import generate_dataset

    out = made_by_the_tool(tmp_path / "run")
    generate_dataset(out / "mydata", size=32, n_train=2, n_test_good=1, n_per_defect=1)
    with pytest.raises(PipelineError, match="lies inside --out"):
        run_pipeline(out, data=out / "mydata", overwrite=True, params=CI)
    assert (out / "mydata" / "metal_nut").is_dir()


# ------------------------------------------------------------------ paths
def test_out_that_is_a_file_or_cannot_be_written(tmp_path, capsys):
    f = tmp_path / "file.txt"
    f.write_text("x")
    err = error_line(capsys, ["--out", str(f), "--preset", "ci"])
    assert str(f) in err and "is a file" in err
    err = error_line(capsys, ["--out", str(f / "run"), "--preset", "ci"])
    assert str(f / "run") in err and "choose another --out" in err
    assert f.read_text() == "x"


@pytest.mark.skipif(not Path("/sys").is_dir(), reason="needs a read-only /sys")
def test_out_on_a_read_only_file_system(tmp_path, capsys):
    try:
        (Path("/sys") / "patchcore-probe").mkdir()
    except OSError:
        pass
    else:
        pytest.skip("/sys is writable here")
    err = error_line(capsys, ["--out", "/sys/patchcore-run", "--preset", "ci"])
    assert "cannot write to the run folder /sys/patchcore-run" in err


def test_symlink_loops_in_data_or_out(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    a.symlink_to(b)
    b.symlink_to(a)
    err = error_line(capsys, ["--out", str(a / "run"), "--preset", "ci"])
    assert "--out" in err and "link loop" in err
    err = error_line(capsys, ["--data", str(a), "--out", str(tmp_path / "r"), "--preset", "ci"])
    assert "--data" in err and "link loop" in err and not (tmp_path / "r").exists()


# ------------------------------------------------------------------ parameters
@pytest.mark.parametrize(
    "name,value,needle",
    [
        ("sigma", "NaN", "sigma=nan"),
        ("sigma", "Infinity", "sigma=inf"),
        ("weights", "bogus", "weights='bogus'"),
        ("n_examples", "0", "n_examples=0"),
        ("coverage_max_patches", "0", "coverage_max_patches=0"),
        ("coverage_ratios", "abc", "coverage_ratios='abc'"),
        ("coverage_ratios", "[0.1, 2]", "coverage_ratios=[0.1, 2]"),
        ("timing_repeats", "-3", "timing_repeats=-3"),
        ("interactive", "no", "interactive='no'"),
        ("skip_bad_images", "yes", "skip_bad_images='yes'"),
        ("synthetic_n_train", "0", "synthetic_n_train=0"),
        ("download_sha256", "abc", "download_sha256='abc'"),
        ("category", "../etc", "category='../etc'"),
    ],
)
def test_every_parameter_is_checked_before_any_notebook(tmp_path, capsys, name, value, needle):
    out = tmp_path / "run"
    err = error_line(capsys, ["--out", str(out), "--preset", "ci", "-p", name, value])
    assert needle in err and "-p NAME VALUE" in err
    assert not out.exists()


def test_threads_must_be_positive(tmp_path, capsys):
    with pytest.raises(SystemExit):
        pipeline.main(["--out", str(tmp_path / "r"), "--threads", "-2"])
    assert "positive whole number" in capsys.readouterr().err
    with pytest.raises(PipelineError, match="positive"):
        run_pipeline(tmp_path / "r", params=CI, threads=-2)
    assert not (tmp_path / "r").exists()


def test_cuda_without_a_gpu_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    err = error_line(
        capsys, ["--out", str(tmp_path / "r"), "--preset", "ci", "-p", "device", "cuda"]
    )
    assert "device" in err and "no CUDA GPU" in err and not (tmp_path / "r").exists()


# ------------------------------------------------------------------ resume
def test_a_damaged_run_json_on_resume_is_one_line(tmp_path, capsys):
    out = made_by_the_tool(tmp_path / "run")
    (out / "run.json").write_text('{"parameters": {"backbone": "mobilenet_v2"')  # cut short
    err = error_line(capsys, ["--out", str(out), "--resume"])
    assert str(out / "run.json") in err and "--resume" in err
    (out / "run.json").write_text("[1, 2]")
    err = error_line(capsys, ["--out", str(out), "--resume"])
    assert "not a run state" in err


def test_resume_clears_old_results_and_a_killed_kernels_temporary_files(tmp_path, monkeypatch):
    """Notebooks that run again first lose their old outputs: a failure then leaves no
    metrics.json of the earlier run beside the new run.json; and the spill file a killed kernel
    left in artifacts/ is removed."""
    import papermill

    out = made_by_the_tool(tmp_path / "run")
    (out / "timing.json").write_text("{}")
    leftover = out / "artifacts" / "patchcore-features-abc123.f32.tmp"
    leftover.write_bytes(b"\0" * 4096)
    half = out / "artifacts" / ".bank-x.safetensors.k2j3.tmp"
    half.write_bytes(b"\0")
    keep = out / "artifacts" / "features-aaa.f32"
    keep.write_bytes(b"\0")

    def fail(*_, **__):
        raise RuntimeError("ValueError: something broke")

    monkeypatch.setattr(papermill, "execute_notebook", fail)
    logs = []
    with pytest.raises(PipelineError, match="something broke"):
        run_pipeline(out, params=CI, resume=True, log=logs.append)
    assert not (out / "metrics.json").exists() and not (out / "timing.json").exists()
    assert not leftover.exists() and not half.exists() and keep.exists()
    assert any("removed 2 temporary file(s)" in line for line in logs)
    assert any("parameters changed" in line for line in logs)
