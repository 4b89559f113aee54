"""benchmarks/classifiers.py at toy size: the course classifier trained for a few steps, tested on the
whole test split, reported against its goal (the real run's accuracies are printed, never asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchmark_scripts import load_script

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "classifiers.py"


@pytest.fixture(scope="module")
def bench():
    return load_script("classifiers")


def test_a_quick_run_trains_tests_and_reports_against_the_goal(bench, tmp_path, capsys):
    out = tmp_path / "classifiers.json"
    args = ["--quick", "--quiet", "--device", "cpu", "--cache", str(tmp_path / "cache"), "--json", str(out)]
    assert bench.main(args) == 0
    printed = capsys.readouterr().out
    record = json.loads(out.read_text())
    row = record["rows"][0]
    assert row["dataset"] == "fashion-mnist" and row["goal"] == 0.90 and row["test_images"] == 10_000
    assert 0.0 <= row["test_accuracy"] <= 1.0 and row["passed"] == (row["test_accuracy"] >= 0.90)
    assert row["test_accuracy"] == pytest.approx(row["stored_accuracy"])  # the cached file tells the truth
    assert row["recipe"]["epochs"] == 0.01 and 60_000 < row["parameters"] < 90_000  # the 73 k-parameter preset
    verdict = "PASS" if row["passed"] else "FAIL"
    assert f"{100 * row['test_accuracy']:.2f}%" in printed and verdict in printed and "mean nothing" in printed
    assert len(list((tmp_path / "cache").glob("classifier-fashion-mnist-*.pt"))) == 1
    # the second run loads the cached classifier instead of training again
    assert bench.main(args) == 0
    again = json.loads(out.read_text())["rows"][0]
    assert again["test_accuracy"] == row["test_accuracy"] and again["features"] == row["features"]


def test_a_missing_dataset_is_skipped_in_one_line(bench, tmp_path, monkeypatch, capsys):
    from diffusion_course.data import DatasetUnavailableError

    def unavailable(dataset, args):
        raise DatasetUnavailableError(f"{dataset} is not on this machine")

    monkeypatch.setattr(bench, "measure", unavailable)
    out = tmp_path / "r.json"
    assert bench.main(["--datasets", "cifar10", "--quick", "--json", str(out)]) == 0
    assert "cifar10: skipped: cifar10 is not on this machine" in capsys.readouterr().out
    assert json.loads(out.read_text())["skipped"] == {"cifar10": "cifar10 is not on this machine"}


def test_bad_flags_exit_2(bench):
    for bad in (["--datasets", "imagenet"], ["--device", "tpu"]):
        with pytest.raises(SystemExit) as exc:
            bench.parse_args(bad)
        assert exc.value.code == 2, bad
