"""helpers.tools.report: what a run tells the user."""

from helpers.tools.report import failure_message, summary


def test_failure_message_names_the_error_or_the_dead_kernel(tmp_path):
    msg = failure_message(
        "02.ipynb", RuntimeError("trace\nValueError: bad layer"), tmp_path / "t", tmp_path
    )
    assert "ValueError: bad layer" in msg and "--resume" in msg

    class DeadKernelError(RuntimeError):
        pass

    assert "died" in failure_message("03.ipynb", DeadKernelError("x"), tmp_path / "t", tmp_path)


def test_summary_prints_null_metrics_as_not_available(tmp_path):
    text = summary(tmp_path, {"image_auroc": 0.5, "pixel_auroc": None})
    assert "image AUROC 0.500" in text and "pixel AUROC n/a" in text


def test_preflight_accepts_an_out_folder_whose_parents_do_not_exist_yet(tmp_path):
    """A fresh clone has no runs/ folder: `make demo` (--out runs/demo) must pass the disk check."""
    from helpers.run.parameters import BASE_PARAMETERS
    from helpers.tools.report import preflight

    out = tmp_path / "not" / "yet" / "run"
    line = preflight({**BASE_PARAMETERS, "backbone": "mobilenet_v2", "run_dir": str(out)})
    assert line.startswith("preflight: 24 training images")
    assert not (tmp_path / "not").exists()  # the check creates nothing


def test_summary_puts_the_thresholds_side_by_side(tmp_path):
    t = {
        "f1_optimal": {"value": 0.8, "false_alarm_rate": 0.1, "miss_rate": 0.05},
        "good_only": {
            "value": 0.9,
            "target_false_alarm_rate": 0.05,
            "false_alarm_rate": 0.0333,
            "miss_rate": 0.25,
        },
        "max_of_good": None,
    }
    line = next(x for x in summary(tmp_path, {"thresholds": t}).splitlines() if "thresholds" in x)
    assert "F1-optimal 0.800 (false alarms 10%, misses 5%)" in line
    assert "good-only at 5% 0.900 (false alarms 3%, misses 25%)" in line
    assert "max of good" not in line
