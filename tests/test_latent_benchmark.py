"""benchmarks/latent.py, the latent-vs-pixel measurement, at toy size: its pieces and one tiny run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from benchmark_scripts import load_script

from diffusion_course.autoencoder import Autoencoder, autoencoder_config
from diffusion_course.diffusion import DiffusionConfig
from diffusion_course.latent import LatentSpace
from diffusion_course.pipeline import DiffusionPipeline
from diffusion_course.unet import UNet

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "latent.py"


def _script():
    return load_script("latent")


bench = _script()
CPU = torch.device("cpu")


def space() -> LatentSpace:
    torch.manual_seed(0)
    config = autoencoder_config("fashion-mnist", 1, 28, base_channels=8, channel_mults=(1, 2, 2), norm_groups=4)
    return LatentSpace(Autoencoder(config), 2.0, "vae-test")


def test_forward_flops_counts_a_multiply_add_as_two():
    assert bench.forward_flops(torch.nn.Linear(3, 4, bias=False), torch.zeros(1, 3)) == 2 * 3 * 4
    pixel = bench.unet_for("tiny", (1, 28, 28), CPU)
    latent = bench.unet_for("tiny", (4, 8, 8), CPU)
    t = torch.zeros(1, dtype=torch.long)
    ratio = bench.forward_flops(pixel, torch.zeros(1, 1, 28, 28), t) / bench.forward_flops(
        latent, torch.zeros(1, 4, 8, 8), t)
    assert ratio > 8  # 784 positions against 64


def test_training_throughput_runs_real_optimizer_steps():
    model = bench.unet_for("tiny", (4, 8, 8), CPU)
    before = [p.detach().clone() for p in model.parameters()]
    rate = bench.train_images_per_second(model, torch.randn(6, 4, 8, 8), batch_size=4, steps=2, warmup_steps=1,
                                         timesteps=10)
    assert rate > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_sampling_time_includes_decoding_for_a_latent_model():
    s = space()
    model = UNet.from_preset("tiny", image_size=8, in_channels=4, out_channels=4).eval()
    latent = DiffusionPipeline(model, DiffusionConfig(timesteps=10, latent=s.config()), (1, 28, 28), CPU, latent=s)
    timing = bench.sampling_seconds(latent, 2, sampler="ddim", steps=2)
    assert timing["decode_s"] > 0 and timing["total_s"] > timing["decode_s"]
    assert timing["per_image_s"] == pytest.approx(timing["total_s"] / 2)
    pixel_model = UNet.from_preset("tiny", image_size=28, in_channels=1, out_channels=1).eval()
    pixel = DiffusionPipeline(pixel_model, DiffusionConfig(timesteps=10), (1, 28, 28), CPU)
    assert bench.sampling_seconds(pixel, 2, sampler="ddim", steps=2)["decode_s"] == 0


def test_quick_settings_replace_the_defaults():
    args = bench.parse_args(["--quick"])
    assert all(getattr(args, key) == value for key, value in bench.QUICK.items())
    assert bench.parse_args([]).model == "small"


def test_a_tiny_run_writes_results_and_a_reconstruction_grid(tmp_path, capsys):
    out = tmp_path / "bench"
    assert bench.main(["--limit", "32", "--test-limit", "8", "--vae-epochs", "1", "--model", "tiny",
                       "--batch-size", "8", "--train-steps", "1", "--warmup-steps", "1", "--num-samples", "2",
                       "--steps", "1", "--timesteps", "10", "--device", "cpu", "--cache", str(tmp_path / "cache"),
                       "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    vae, cmp = results["autoencoder"], results["comparison"]
    assert vae["latent_shape"] == [4, 8, 8] and vae["train_images"] == 32 and vae["test_images"] == 8
    assert not vae["cached"] and vae["train_seconds"] > 0
    assert vae["latent_std_after_scaling"] == pytest.approx(1.0, abs=1e-4)
    assert set(vae["test"]) == {"mse", "l1", "psnr"}
    assert cmp["pixel"]["shape"] == [1, 28, 28] and cmp["latent"]["shape"] == [4, 8, 8]
    assert cmp["flops_ratio"] == pytest.approx(cmp["pixel"]["forward_flops"] / cmp["latent"]["forward_flops"])
    assert (out / "reconstructions.png").is_file()
    printed = capsys.readouterr().out
    assert "latent / pixel: training" in printed and "PSNR" in printed
    # a second run finds the autoencoder in the cache
    assert bench.main(["--limit", "32", "--test-limit", "8", "--vae-epochs", "1", "--model", "tiny",
                       "--batch-size", "8", "--train-steps", "1", "--warmup-steps", "1", "--num-samples", "2",
                       "--steps", "1", "--timesteps", "10", "--device", "cpu", "--cache", str(tmp_path / "cache"),
                       "--out", str(out)]) == 0
    again = json.loads((out / "results.json").read_text())["autoencoder"]
    assert again["cached"] and again["train_seconds"] == 0 and again["scaling_factor"] == vae["scaling_factor"]
