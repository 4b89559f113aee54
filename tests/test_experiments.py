"""diffusion_course.experiments: the ablation record read back, tabled and drawn; the U-Net's cost by resolution."""

from __future__ import annotations

import json

import matplotlib
import pytest

from diffusion_course.experiments import (
    ABLATIONS_FILE,
    ablation_rows,
    cost_by_resolution,
    format_ablations,
    load_ablations,
    plot_ablations,
)
from diffusion_course.unet import UNet, count_parameters, forward_flops

matplotlib.use("Agg")


def _cell(name, factor, fid, steps=100, minutes=3):
    return {"name": name, "factor": factor, "minutes": minutes, "recipe": {},
            "result": {"fid": fid, "kid": fid / 40, "steps": steps, "images_per_s": steps / 2.0}}


RECORD = {
    "grid": [_cell("baseline", "baseline", 8.0), _cell("tiny", "size", 4.0, 200), _cell("wide", "size", 10.0, 50),
             {"name": "unfinished", "factor": "ema", "minutes": 3, "recipe": {}, "result": {}}],
    "finals": [_cell("x0", "prediction", 3.0, minutes=15)],
}


def test_rows_are_best_first_and_relative_to_the_stages_baseline():
    rows = ablation_rows(RECORD)
    assert [r.name for r in rows] == ["tiny", "baseline", "wide"]  # the unfinished cell is left out
    assert [r.fid_vs_baseline for r in rows] == [0.5, 1.0, 1.25]
    assert rows[0].steps == 200 and rows[0].images_per_s == 100.0 and rows[0].kid == 0.1
    table = format_ablations(RECORD)
    assert table.splitlines()[1].split()[:2] == ["tiny", "size"] and "0.50x" in table and "1.25x" in table
    assert table.splitlines()[1].split()[-3:] == ["-", "-", "-"]  # no precision, recall or time recorded
    scored = {"grid": [dict(c, result=dict(c["result"], precision=0.7, recall=0.6, sampling_s=12.5))
                       for c in RECORD["grid"][:2]]}
    assert ablation_rows(scored)[0].precision == 0.7
    table = format_ablations(scored, title="Stage 1")
    assert table.splitlines()[0] == "Stage 1" and table.splitlines()[2].split()[-3:] == ["0.70", "0.60", "12.5"]


def test_a_stage_without_a_baseline_or_an_unknown_stage_is_refused():
    with pytest.raises(ValueError, match="'finals' stage has no finished baseline"):
        ablation_rows(RECORD, "finals")
    with pytest.raises(ValueError, match="stage must be one of"):
        ablation_rows(RECORD, "final")


def test_the_plot_has_a_bar_and_a_point_per_cell():
    fig = plot_ablations(RECORD)
    bars, scatter = fig.axes
    assert [p.get_width() for p in bars.patches] == [0.5, 1.0, 1.25]
    assert len(scatter.collections) == 3
    assert "3 CPU-minutes" in bars.get_title()


def test_load_finds_the_record_from_a_notebook_folder_or_a_given_path(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    (repo / ABLATIONS_FILE).parent.mkdir(parents=True)
    (repo / ABLATIONS_FILE).write_text(json.dumps(RECORD))
    notebook_folder = repo / "notebooks" / "04_sampling"
    notebook_folder.mkdir(parents=True)
    monkeypatch.chdir(notebook_folder)
    record = load_ablations()
    assert record["grid"] == RECORD["grid"] and record["path"] == str((repo / ABLATIONS_FILE).resolve())
    assert load_ablations(tmp_path / "nothing.json") is None
    assert load_ablations(repo / ABLATIONS_FILE)["finals"] == RECORD["finals"]


def test_cost_by_resolution_adds_up_to_the_whole_network():
    model = UNet.from_preset("small", image_size=28, in_channels=1, out_channels=1)
    rows = cost_by_resolution(model)
    assert [r.side for r in rows] == [28, 14, 7, 1]
    assert sum(r.flops for r in rows) == forward_flops(model)
    assert sum(r.parameters for r in rows) == count_parameters(model)
    by_side = {r.side: r for r in rows}
    # the small preset keeps its parameters where the maps are small (7x7) ...
    assert by_side[7].parameters > 0.8 * count_parameters(model)
    # ... yet the 28x28 level still costs a fifth of the FLOPs with under 3 % of the parameters
    assert by_side[28].flops > 0.15 * forward_flops(model) and by_side[28].parameters < 0.03 * count_parameters(model)


def test_attention_at_14_shows_up_at_14_and_a_class_embedding_at_side_1():
    plain = {r.side: r for r in cost_by_resolution(UNet.from_preset("tiny", image_size=28, in_channels=1,
                                                                        out_channels=1))}
    attn = {r.side: r for r in cost_by_resolution(UNet.from_preset("tiny", image_size=28, in_channels=1,
                                                                       out_channels=1, attention_resolutions=(14,)))}
    assert attn[14].flops > plain[14].flops and attn[28].flops == plain[28].flops
    conditional = UNet.from_preset("tiny", image_size=28, in_channels=1, out_channels=1, num_classes=10)
    cond = {r.side: r for r in cost_by_resolution(conditional)}
    assert cond[1].parameters == plain[1].parameters + conditional.class_embed.weight.numel()
    assert sum(r.parameters for r in cond.values()) == count_parameters(conditional)
