"""Does our training produce a model as good as the reference implementation's, in the same time?

Trains two networks on Fashion-MNIST on the CPU, one after the other, each for the same
wall-clock budget and with *the same training loop* (:class:`diffusion_course.trainer.Trainer`:
same data order, noise, optimizer, EMA, learning-rate warm-up):

- ours:      ``UNet.from_preset("small")`` at 28x28, 1 channel
- reference: diffusers' ``UNet2DModel`` with the parameter count of ours (within 10%,
             checked), by default the same model ``benchmarks/unet_throughput.py`` races
             (``--reference twin`` builds it with our preset's architecture instead),
             sampled with diffusers' ``DDPMScheduler``.

Then both EMA models are sampled (ours with :func:`diffusion_course.sampling.ddpm_sample`,
the reference with ``DDPMScheduler.step``, both with the same number of respaced steps) and
the script prints a table: optimizer steps done, images per second, the training loss
averaged over the last 10% of steps, and the denoising loss (MSE of the predicted noise) of
each EMA model on held-out *test* images at fixed timesteps with fixed noise. It saves both
sample grids, the loss curves (PNG) and all numbers (``results.json``) in ``--out``.

Image quality: ``--fid-samples`` images (default 1,000) from each EMA model, drawn with the same
sampler for both (DPM-Solver++, 20 steps), scored by :func:`diffusion_course.evaluation.evaluate_images`
(FID/KID/precision/recall on the course classifier's features, the same numbers as the evaluate command).

With a CUDA GPU it also measures training throughput (images/s) of ``ddpm-cifar10`` on
CIFAR-10 with bf16 and channels_last; without one that part is skipped.

Usage (the full run takes about 2 x --minutes plus a few minutes of sampling)::

    python benchmarks/train_quality.py                 # 15 minutes per model
    python benchmarks/train_quality.py --minutes 1     # smoke test

Timings are wall-clock and depend on whatever else runs on the machine; both models train
in the same process one after the other, so compare them from the same run only.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn

from diffusion_course import data
from diffusion_course.batching import load_training_data
from diffusion_course.benchmarking import DIFFUSERS_OPPONENT
from diffusion_course.losses import loss_per_timestep
from diffusion_course.runtime import seed_everything
from diffusion_course.sampling import ddpm_sample
from diffusion_course.schedules import get_schedule
from diffusion_course.trainer import Trainer
from diffusion_course.training import CPU_RECIPE, TrainConfig, build_model
from diffusion_course.unet import count_parameters
from diffusion_course.viz import save_image_grid

HELDOUT_T = (10, 100, 250, 500, 750, 900)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # the defaults are the course's CPU recipe (notebook 03 trains with it too)
    p.add_argument("--minutes", type=float, default=CPU_RECIPE["max_minutes"],
                   help=f"training budget per model (default {CPU_RECIPE['max_minutes']:g})")
    p.add_argument("--batch-size", type=int, default=CPU_RECIPE["batch_size"])
    p.add_argument("--lr", type=float, default=CPU_RECIPE["lr"])
    p.add_argument("--warmup-steps", type=int, default=CPU_RECIPE["warmup_steps"])
    p.add_argument("--ema-decay", type=float, default=CPU_RECIPE["ema_decay"])
    p.add_argument("--sample-count", type=int, default=64)
    p.add_argument("--sample-steps", type=int, default=100, help="respaced DDPM steps for the grids")
    p.add_argument("--test-images", type=int, default=512, help="held-out images for the denoising loss")
    p.add_argument("--fid-samples", type=int, default=1000, help="samples per model for FID/KID (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=10, help="steps per point of the loss curve")
    p.add_argument("--out", default="runs/benchmarks/train_quality")
    p.add_argument("--gpu-steps", type=int, default=50, help="timed steps of the GPU throughput check")
    p.add_argument("--skip-gpu", action="store_true")
    p.add_argument("--reference", choices=REFERENCES, default="default",
                   help="which diffusers UNet2DModel to train beside ours (see REFERENCES)")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------
# The two models
# ---------------------------------------------------------------------------


REFERENCES = ("default", "twin")
"""Which diffusers UNet2DModel to train beside ours (``--reference``):

- ``default``: the opponent of ``benchmarks/unet_throughput.py`` (``benchmarking.DIFFUSERS_OPPONENT``):
  diffusers' usual block layout with attention at the lower levels, sized to our parameter
  count. This is "the diffusers baseline" the course's goals compare against.
- ``twin``: UNet2DModel built with our preset's widths, blocks per level, GroupNorm groups,
  dropout and attention placement, to compare two implementations of one architecture.
"""


class DiffusersUNet(nn.Module):
    """diffusers' UNet2DModel behind ``model(x_t, t) -> eps``.

    ``reference="twin"`` shapes it like our preset ``config`` (same widths per level,
    residual blocks per level, GroupNorm groups, dropout, self-attention resolutions; the
    implementations differ in details such as up-sampling widths, so the parameter counts are
    close, not equal). ``reference="default"`` uses the throughput benchmark's configuration.
    :func:`build_reference` checks either is within 10% of our parameter count.
    """

    def __init__(self, config, image_size: int, channels: int, reference: str = "default") -> None:
        super().__init__()
        from diffusers import UNet2DModel

        if reference == "default":
            kwargs = dict(DIFFUSERS_OPPONENT)
        else:
            levels = [image_size // 2**i for i in range(len(config.channel_mults))]
            attn = [r in config.attention_resolutions for r in levels]
            kwargs = dict(
                block_out_channels=tuple(config.base_channels * m for m in config.channel_mults),
                layers_per_block=config.num_res_blocks,
                down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
                up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
                norm_num_groups=config.norm_groups,
                dropout=config.dropout,
            )
        self.unet = UNet2DModel(sample_size=image_size, in_channels=channels, out_channels=channels, **kwargs)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t).sample


def build_reference(ours: nn.Module, image_size: int, channels: int, reference: str = "default") -> DiffusersUNet:
    """The diffusers opponent of ``ours``; refuses a parameter count more than 10% off."""
    model = DiffusersUNet(ours.config, image_size, channels, reference)
    n_ours, n_ref = count_parameters(ours), count_parameters(model)
    if abs(n_ref / n_ours - 1) > 0.10:
        raise RuntimeError(
            f"the diffusers {reference} model has {n_ref:,} parameters, ours {n_ours:,} (more than 10% apart); "
            "adjust it to the current 'small' preset"
        )
    return model


def diffusers_scheduler(schedule):
    """DDPMScheduler with our schedule's betas (checked), fixed-small variance, x0 clipping."""
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(
        num_train_timesteps=schedule.timesteps,
        beta_schedule="linear",
        variance_type="fixed_small",
        clip_sample=True,
        timestep_spacing="linspace",
    )
    if not torch.allclose(sched.alphas_cumprod.double(), schedule.alphas_cumprod, atol=1e-6):
        raise RuntimeError("diffusers' linear schedule differs from ours; the comparison would be unfair")
    return sched


@torch.no_grad()
def sample_with_diffusers(model: nn.Module, sched, shape, steps: int, seed: int) -> torch.Tensor:
    """The reference sampler: DDPMScheduler.step, as diffusers' DDPMPipeline runs it."""
    sched.set_timesteps(steps)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen)
    for t in sched.timesteps:
        x = sched.step(model(x, t.repeat(shape[0])), t, x, generator=gen).prev_sample
    return x.clamp(-1, 1)


# ---------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------


@torch.no_grad()
def heldout_loss(model: nn.Module, images: torch.Tensor, schedule, seed: int, batch: int = 128) -> dict:
    """MSE of the predicted noise on held-out images at each t in HELDOUT_T (fixed noise), and their mean."""
    out = loss_per_timestep(model, images, schedule, HELDOUT_T, seed=seed, batch_size=batch)
    out["mean"] = sum(out[t] for t in HELDOUT_T) / len(HELDOUT_T)
    return out


def quality_metrics(model: nn.Module, schedule, shape, count: int, seed: int) -> dict:
    """FID/KID/precision/recall of ``count`` samples of ``model`` (DPM-Solver++, 20 steps) against the test set."""
    from diffusion_course.evaluation import evaluate_images
    from diffusion_course.sampling import sample

    gen = torch.Generator().manual_seed(seed)
    images = torch.cat([sample(model, schedule, (min(500, count - i), *shape[1:]), sampler="dpm-solver++", steps=20,
                               generator=gen) for i in range(0, count, 500)])
    report = evaluate_images(images, "fashion-mnist", seed=seed)
    return {"FID": report.fid, "KID": report.kid, "precision": report.precision, "recall": report.recall}


def train_one(name: str, model: nn.Module, source, stats: dict, args, out: Path) -> dict:
    config = TrainConfig(
        dataset="fashion-mnist",
        model="small",
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        ema_decay=args.ema_decay,
        max_minutes=args.minutes,
        seed=args.seed,
        device="cpu",
        out=str(out / name),
        log_every=args.log_every,
        sample_every=0,
        checkpoint_every=0,
        sample_count=args.sample_count,
        sample_steps=args.sample_steps,
    )
    seed_everything(args.seed)
    print(f"\n== {name}: {count_parameters(model):,} parameters, {args.minutes:g} minutes ==", flush=True)
    trainer = Trainer(config, model, source, device="cpu", data_stats=stats)
    start = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - start
    history = result.history
    tail = history[-max(1, math.ceil(len(history) / 10)) :]  # the last 10% of the logged steps
    rates = [h["images_per_s"] for h in history[1:]] or [h["images_per_s"] for h in history]
    return {
        "trainer": trainer,
        "steps": result.step,
        "seconds": seconds,
        "images_per_s": sum(rates) / len(rates),
        "train_loss_last10": sum(h["loss"] for h in tail) / len(tail),
        "curve": [(h["step"], h["loss"]) for h in history],
        "parameters": count_parameters(model),
    }


def gpu_throughput(args) -> dict | None:
    """Training images/s of ddpm-cifar10 on CIFAR-10 (bf16 autocast, channels_last), or None."""
    if not torch.cuda.is_available():
        return None
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    config = TrainConfig(dataset="cifar10", model="ddpm-cifar10", batch_size=128, precision="bf16",
                         channels_last=True, max_steps=10 + args.gpu_steps, log_every=10, sample_every=0,
                         checkpoint_every=0, out=str(Path(args.out) / "gpu"), device="cuda", progress=False)
    source, stats = load_training_data(config, device, progress=False)
    seed_everything(0)
    model = build_model(config, stats["channels"], stats["image_size"])
    trainer = Trainer(config, model, source, device=device, data_stats=stats)
    result = trainer.train()
    rates = [h["images_per_s"] for h in result.history[1:]]  # the first 10 steps warm up cuDNN
    return {"device": torch.cuda.get_device_name(device), "batch_size": 128, "precision": "bf16",
            "steps_timed": args.gpu_steps, "images_per_s": sum(rates) / len(rates)}


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


def plot_curves(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, r in results.items():
        steps, losses = zip(*r["curve"], strict=True) if r["curve"] else ((), ())
        ax.plot(steps, losses, label=name, marker="o" if len(steps) < 20 else None)
    ax.set(xlabel="optimizer step", ylabel="training loss (mean of 10 steps)", yscale="log",
           title="Fashion-MNIST, same loop, same wall-clock budget")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_report(results: dict, gpu: dict | None) -> None:
    names = list(results)
    rows = [
        ("parameters", lambda r: f"{r['parameters']:,}"),
        ("optimizer steps", lambda r: f"{r['steps']}"),
        ("images / s (train)", lambda r: f"{r['images_per_s']:.1f}"),
        ("train loss, last 10% of steps", lambda r: f"{r['train_loss_last10']:.4f}"),
        *[(f"EMA test loss at t={t}", lambda r, t=t: f"{r['heldout'][t]:.4f}") for t in HELDOUT_T],
        ("EMA test loss, mean over t", lambda r: f"{r['heldout']['mean']:.4f}"),
        *[(f"{k} (course features, DPM-Solver++ 20)", lambda r, k=k: f"{r['quality'][k]:.4f}")
          for k in ("FID", "KID", "precision", "recall")],
    ]
    width = max(len(label) for label, _ in rows)
    print("\n" + " " * width + "".join(f" | {n:>22}" for n in names))
    print("-" * (width + 25 * len(names)))
    for label, fmt in rows:
        print(f"{label:<{width}}" + "".join(f" | {fmt(results[n]):>22}" for n in names))
    print("\nloss curve (training loss at 10 evenly spaced log points):")
    for name in names:
        curve = results[name]["curve"]
        picks = [curve[round(i * (len(curve) - 1) / 9)] for i in range(10)] if len(curve) >= 10 else curve
        print(f"  {name:>10}: " + "  ".join(f"{s}:{loss:.3f}" for s, loss in picks))
    if gpu is None:
        print("\nGPU throughput: skipped (no CUDA device)")
    else:
        print(f"\nGPU throughput, ddpm-cifar10 on CIFAR-10 ({gpu['device']}, batch {gpu['batch_size']}, "
              f"{gpu['precision']}, channels_last): {gpu['images_per_s']:.0f} images/s")


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*/checkpoint.pt"):
        stale.unlink()  # benchmark runs always start fresh
    schedule = get_schedule("linear", 1000)
    sched = diffusers_scheduler(schedule)

    config = TrainConfig(dataset="fashion-mnist")
    source, stats = load_training_data(config, torch.device("cpu"))
    test_images, _ = data.load_tensors("fashion-mnist", train=False, limit=args.test_images, progress=False)
    c, size = stats["channels"], stats["image_size"]

    seed_everything(args.seed)
    ours = build_model(TrainConfig(model="small"), c, size)
    seed_everything(args.seed)
    reference = build_reference(ours, size, c, args.reference)
    print(f"ours: {count_parameters(ours):,} parameters; diffusers ({args.reference}): "
          f"{count_parameters(reference):,} parameters", flush=True)
    results = {
        "ours": train_one("ours", ours, source, stats, args, out),
        "diffusers": train_one("diffusers", reference, source, stats, args, out),
    }

    shape = (args.sample_count, c, size, size)
    for name, r in results.items():
        ema_model = r.pop("trainer").ema.module
        r["heldout"] = heldout_loss(ema_model, test_images, schedule, seed=args.seed + 1)
        print(f"sampling {name} ({args.sample_steps} steps) ...", flush=True)
        if name == "ours":
            samples = ddpm_sample(ema_model, schedule, shape, generator=torch.Generator().manual_seed(args.seed),
                                  steps=args.sample_steps)
        else:
            samples = sample_with_diffusers(ema_model, sched, shape, args.sample_steps, args.seed)
        save_image_grid(samples, out / f"samples_{name}.png")
        print(f"scoring {name} on {args.fid_samples} samples ...", flush=True)
        r["quality"] = quality_metrics(ema_model, schedule, shape, args.fid_samples, args.seed + 2)

    gpu = None if args.skip_gpu else gpu_throughput(args)
    plot_curves(results, out / "loss_curves.png")
    print_report(results, gpu)
    summary = {"args": vars(args), "results": results, "gpu": gpu}
    (out / "results.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(f"\nwrote {out / 'samples_ours.png'}, {out / 'samples_diffusers.png'}, "
          f"{out / 'loss_curves.png'}, {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
