"""benchmarks/ablations.py at toy size: the grid, the winners' combination, resuming, the report."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from benchmark_scripts import load_script

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def ablations():
    module = load_script("ablations", "ablations")
    yield module
    sys.modules.pop("ablations", None)


def test_the_grid_varies_one_factor_at_a_time(ablations):
    cells = ablations.grid_cells(4)
    assert cells[0].name == "baseline" and cells[0].recipe == ablations.BASELINE
    for cell in cells[1:]:
        changed = {k for k, v in vars(cell.recipe).items() if getattr(ablations.BASELINE, k) != v}
        assert changed and changed <= {"model", "unet", "schedule", "timesteps", "prediction", "min_snr",
                                       "batch_size", "lr", "ema_decay", "warmup_steps"}
        assert len(changed) <= 2 and cell.minutes == 4  # batch and lr move together in one cell
    names = [c.name for c in cells]
    assert len(names) == len(set(names))
    for must in ("T=100", "T=500", "linear", "sigmoid", "tiny", "wide", "attention 14+7", "x0", "v", "min-SNR 5"):
        assert must in names


def test_winners_combine_every_factor_that_beat_the_baseline(ablations):
    cells = ablations.grid_cells(1)
    fids = {"baseline": 10.0, "sigmoid": 8.0, "linear": 12.0, "v": 9.0, "x0": 11.0, "wide": 9.5,
            "attention 14+7": 9.8}
    for cell in cells:
        cell.result = {"fid": fids.get(cell.name, 20.0)}
    recipe = ablations.winners(cells)
    assert recipe.schedule == "sigmoid" and recipe.prediction == "v"
    # wide won the size factor and attention at 14+7 its own: U-Net overrides of both add up
    assert dict(recipe.unet) == {"base_channels": 24, "attention_resolutions": (14,)}
    assert recipe.timesteps == ablations.BASELINE.timesteps  # T=100/500 scored worse than the baseline


def test_a_finished_cell_is_not_trained_again(ablations, tmp_path, monkeypatch, capsys):
    calls = []

    def fake_train(cell, args, source, stats):
        calls.append(cell.name)
        cell.result.update(steps=3, images_per_s=10.0, parameters=1, final_loss=0.5)
        return tmp_path / "checkpoint.pt"

    def fake_score(checkpoint, args, sampler="dpm-solver++", steps=20, count=None):
        return {"fid": 1.5, "fid_infinity": 1.0, "kid": 0.01, "kid_std": 0.001, "precision": 0.9, "recall": 0.8,
                "sampling_s": 2.0, "sampled_images_per_s": 5.0, "sampler": sampler, "sampler_steps": steps,
                "num_samples": 4, "features": "stand-in"}

    monkeypatch.setattr(ablations, "train_cell", fake_train)
    monkeypatch.setattr(ablations, "score", fake_score)
    args = ablations.parse_args(["--out", str(tmp_path), "--quick"])
    cell = ablations.grid_cells(1)[0]
    (tmp_path / "cells" / cell.key).mkdir(parents=True)
    ablations.run_cell(cell, args, None, None)
    ablations.run_cell(ablations.grid_cells(1)[0], args, None, None)
    assert calls == ["baseline"]
    saved = json.loads((tmp_path / "cells" / cell.key / "result.json").read_text())
    assert saved["result"]["fid"] == 1.5 and saved["recipe"]["model"] == "small"
    assert "[skip] baseline" in capsys.readouterr().out
    report = ablations.table([cell], "grid", "title")
    assert report.splitlines()[0] == "title"
    row = report.splitlines()[2].split()
    assert row[0] == "baseline" and "1.500" in row and "1.00x" in row
    assert row[-3:] == ["0.90", "0.80", "2.0"]  # precision, recall, sampling seconds
    plots = ablations.save_plots({"grid": [ablations._record(cell)], "finals": []}, tmp_path)
    assert plots == [tmp_path / "ablations.png"] and plots[0].stat().st_size > 1000


def test_bad_flags_exit_2(ablations):
    with pytest.raises(SystemExit) as exc:
        ablations.parse_args(["--grid-minutes", "0"])
    assert exc.value.code == 2


def test_a_negative_number_of_finalists_exits_2(ablations):
    with pytest.raises(SystemExit) as exc:
        ablations.parse_args(["--finalists", "-1"])
    assert exc.value.code == 2


def test_publish_copies_the_record_and_the_two_sample_grids(ablations, tmp_path):
    finals = [ablations.Cell("baseline", "baseline", ablations.BASELINE, 15),
              ablations.Cell("x0", "prediction", ablations.BASELINE, 15),
              ablations.Cell("tiny", "size", ablations.BASELINE, 15)]
    for cell in finals:
        folder = tmp_path / "run" / "cells" / cell.key
        folder.mkdir(parents=True)
        (folder / "samples-dpm-solver++-20.png").write_bytes(cell.name.encode())
    target = tmp_path / "results" / "ablations.json"
    ablations.publish({"champion": "x0", "grid": []}, tmp_path / "run", finals, target)
    assert json.loads(target.read_text())["champion"] == "x0"
    assert (target.parent / "ablations-baseline.png").read_bytes() == b"baseline"
    assert (target.parent / "ablations-champion.png").read_bytes() == b"x0"
    assert sorted(p.name for p in target.parent.iterdir()) == [
        "ablations-baseline.png", "ablations-champion.png", "ablations.json"]


def test_a_published_record_seeds_the_finished_cells_of_a_fresh_clone(ablations, tmp_path, monkeypatch, capsys):
    """--from-record: the published grid counts as done, so only what the record lacks would train."""
    record = json.loads((REPO / "benchmarks" / "results" / "ablations.json").read_text())
    out = tmp_path / "run"
    seeded = ablations.seed_from_record(record, out)
    grid = ablations.grid_cells(record["grid"][0]["minutes"])
    assert {c.key for c in grid} <= set(seeded)  # the record's keys are the ones a rerun looks for
    assert len(seeded) == len(record["grid"]) + len(record["finals"])
    wide = json.loads((out / "cells" / next(c.key for c in grid if c.name == "wide") / "result.json").read_text())
    assert wide["recipe"]["unet"] == [["base_channels", 24]] and wide["result"] == next(
        c["result"] for c in record["grid"] if c["name"] == "wide")
    monkeypatch.setattr(ablations, "train_cell", lambda *a: pytest.fail("a seeded cell must not train"))
    args = ablations.parse_args(["--out", str(out), "--quick"])
    cell = ablations.run_cell(next(c for c in grid if c.name == "x0"), args, None, None)
    assert cell.result["fid"] == next(c["result"]["fid"] for c in record["grid"] if c["name"] == "x0")
    assert ablations.seed_from_record(record, out) == []  # nothing is overwritten
    with pytest.raises(SystemExit) as exc:
        ablations.parse_args(["--from-record", str(tmp_path / "missing.json")])
    assert exc.value.code == 2
