"""Every category in one batch (``run --category all``): one run folder per category, resumable
per category, one summary table. The notebooks are stood in for by their stages, run in this
process (papermill itself is tested in test_pipeline.py), so the run folders are real."""

from __future__ import annotations

import csv
import json

import conftest
import pytest

from helpers.data.synthetic import generate_dataset
from helpers.run.run import Run
from helpers.tools import pipeline
from helpers.tools.pipeline import NOTEBOOKS

PARAMS = dict(conftest.SMALL, false_alarm_rate=0.2)


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "mvtec"
    for seed, name in enumerate(("alpha", "beta")):
        generate_dataset(root, name, size=64, n_train=4, n_test_good=2, n_per_defect=1, seed=seed)
    (root / "not_a_category").mkdir()  # no train/good: not listed
    return root


@pytest.fixture
def notebooks(monkeypatch):
    """papermill.execute_notebook -> the notebook's stage, run here; records (category, nb)."""
    import papermill

    calls, fail = [], set()

    def execute(src, dst, parameters, **_):
        nb, category = src.split("/")[-1], parameters["category"]
        if (category, nb) in fail:
            fail.discard((category, nb))
            raise RuntimeError("ValueError: boom")
        calls.append((category, nb))
        run = Run.from_params(parameters, verbose=False)
        i = NOTEBOOKS.index(nb)
        if i == 1:
            run.features().close()
        elif i == 2:
            run.model()
        elif i >= 3:
            pred = run.predictions()
            if i == 4:
                run.write_metrics(run.evaluate(pred), pred)
        with open(dst, "w") as fh:
            fh.write("{}")

    monkeypatch.setattr(papermill, "execute_notebook", execute)
    monkeypatch.setattr(pipeline, "KERNELS_AHEAD", False)  # no kernel: the stages run here
    return calls, fail


def args(data, out, *more):
    flags = [x for k, v in PARAMS.items() for x in ("-p", k, json.dumps(v))]
    return ["--data", str(data), "--out", str(out), "--category", "all", *flags, *more]


def test_every_category_into_its_folder_resumable_with_one_summary(data, tmp_path, notebooks):
    calls, fail = notebooks
    out = tmp_path / "batch"
    fail.add(("beta", NOTEBOOKS[3]))  # beta stops in notebook 04
    assert pipeline.main(args(data, out)) == 1
    with open(out / "summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["category"] for r in rows] == ["alpha", "beta", "mean"]
    assert rows[0]["status"] == "done" and rows[1]["status"].startswith("failed: 04_a100")
    assert rows[2]["status"] == "1 of 2 done"
    calls.clear()
    assert pipeline.main(args(data, out, "--resume")) == 0
    # alpha finished: nothing again; beta: from notebook 04 on, its features and bank reused
    assert calls == [("beta", nb) for nb in NOTEBOOKS[3:]]
    with open(out / "summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows[:2]:
        metrics = json.loads((out / row["category"] / "metrics.json").read_text())
        assert metrics["config"]["category"] == row["category"] and row["status"] == "done"
        assert float(row["image_auroc"]) == pytest.approx(metrics["image_auroc"])
        good = metrics["thresholds"]["good_only"]
        assert float(row["good_only_threshold"]) == pytest.approx(good["value"])
        assert float(row["good_only_miss_rate"]) == pytest.approx(good["miss_rate"])
        assert float(row["good_only_target_rate"]) == 0.2
    mean = (float(rows[0]["image_auroc"]) + float(rows[1]["image_auroc"])) / 2
    assert float(rows[2]["image_auroc"]) == pytest.approx(mean)
    md = (out / "summary.md").read_text()
    assert md.startswith("| category | status | image AUROC") and "| alpha | done |" in md
    assert "false-alarm rate of 0.2" in md


def test_bad_category_lists_give_one_line(data, tmp_path, capsys, notebooks):
    out = str(tmp_path / "o")
    cases = {
        "needs --data": ["--out", out, "--category", "all"],
        "twice": ["--data", str(data), "--out", out, "--category", "alpha,alpha"],
        "no category folders": ["--data", str(tmp_path), "--out", out, "--category", "all"],
    }
    for words, argv in cases.items():
        capsys.readouterr()
        assert pipeline.main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert words in err and "\n" not in err, (words, err)
    assert notebooks[0] == []
