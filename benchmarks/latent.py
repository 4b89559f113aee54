"""Latent vs pixel diffusion: what the autoencoder saves, and what it costs.

Latent diffusion (Rombach et al. 2022) trains the U-Net on an autoencoder's latents instead of
pixels. This script measures, in one run on one machine:

1. **the autoencoder**: its one-off training time (0 when it comes from the cache
   ``data/autoencoders``, the cache ``train --latent`` uses too), the latent scaling factor, the
   one-off time to encode the training set, and its reconstruction error on *test* images (MSE
   and PSNR), with a grid of test images above their reconstructions;
2. **training throughput**: images/s of the same U-Net preset, the same objective (DDPM's
   L_simple) and optimizer, on pixels (e.g. 1x28x28) and on latents (4x8x8), with real batches,
   after a few warm-up steps; and the forward FLOPs of each network;
3. **sampling time per image**, with the same sampler and number of steps, for pixels and for
   latents *including* decoding (decoding alone is reported too).

Timings use untrained diffusion networks: the cost of a forward pass does not depend on the
weights. Quality of latent samples is a separate question (train one with
``python -m diffusion_course.train --latent`` and ``python -m diffusion_course.evaluate``).

Usage::

    python benchmarks/latent.py                 # Fashion-MNIST; trains the VAE once (cached; minutes on a CPU)
    python benchmarks/latent.py --quick         # smoke run: 128 images, 1 VAE epoch, seconds

Results go to ``--out``: ``results.json`` and ``reconstructions.png``. Timings depend on what else
runs on the machine; compare numbers from the same run only.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from diffusion_course.autoencoder import AutoencoderRecipe, reconstruction_error
from diffusion_course.benchmarking import synchronize
from diffusion_course.data import load_tensors
from diffusion_course.diffusion import DiffusionConfig
from diffusion_course.latent import LatentSpace, autoencoder_key, cache_dir, course_autoencoder, dataset_latents
from diffusion_course.losses import DiffusionObjective
from diffusion_course.pipeline import DiffusionPipeline
from diffusion_course.runtime import DEVICES, get_device
from diffusion_course.sampling import SAMPLERS
from diffusion_course.unet import PRESETS, UNet
from diffusion_course.viz import save_image_grid

QUICK = dict(limit=128, test_limit=32, vae_epochs=1.0, model="tiny", batch_size=16, train_steps=2, warmup_steps=1,
             num_samples=4, steps=3, timesteps=50)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="fashion-mnist", choices=("mnist", "fashion-mnist", "cifar10"))
    p.add_argument("--limit", type=int, default=None, help="training images (default: all)")
    p.add_argument("--test-limit", type=int, default=2000, help="test images for the reconstruction error")
    p.add_argument("--vae-epochs", type=float, default=5.0, help="the VAE's training epochs (as train --vae-epochs)")
    p.add_argument("--model", default="small", choices=tuple(PRESETS), help="U-Net preset for both (default: small)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--train-steps", type=int, default=20, help="timed training steps per model")
    p.add_argument("--warmup-steps", type=int, default=3, help="untimed steps first")
    p.add_argument("--sampler", default="ddim", choices=SAMPLERS)
    p.add_argument("--steps", type=int, default=50, help="sampling steps")
    p.add_argument("--num-samples", type=int, default=64, help="images sampled (one batch) per model")
    p.add_argument("--timesteps", type=int, default=1000, help="T")
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/latent_benchmark"))
    p.add_argument("--cache", type=Path, default=None,
                   help="autoencoder cache folder (default: data/autoencoders; --quick: a temporary one)")
    p.add_argument("--quick", action="store_true", help="smoke run: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    return args


# ---------------------------------------------------------------------------
# The pieces
# ---------------------------------------------------------------------------


def forward_flops(model: torch.nn.Module, *inputs) -> int:
    """FLOPs of one forward pass (PyTorch's counter: a multiply-add is 2)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(*inputs)
    return counter.get_total_flops()


def train_images_per_second(
    model: torch.nn.Module, data: torch.Tensor, *, batch_size: int, steps: int, warmup_steps: int = 1,
    timesteps: int = 1000, seed: int = 0,
) -> float:
    """Images/s of DDPM training steps (L_simple, AdamW) of ``model`` on batches of ``data [N, C, H, W]``.

    The batches cycle through ``data`` in order; the first ``warmup_steps`` steps are not timed."""
    device = next(model.parameters()).device
    objective = DiffusionObjective(DiffusionConfig(timesteps=timesteps))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator(device=device).manual_seed(seed)
    model.train()
    n = data.shape[0]
    start = None
    for step in range(warmup_steps + steps):
        if step == warmup_steps:
            synchronize(device)
            start = time.perf_counter()
        idx = torch.arange(step * batch_size, (step + 1) * batch_size) % n
        loss = objective(model, data[idx].to(device), None, generator).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    synchronize(device)
    return batch_size * steps / (time.perf_counter() - start)


def sampling_seconds(pipe: DiffusionPipeline, count: int, *, sampler: str, steps: int, seed: int = 0) -> dict:
    """Wall-clock seconds to draw ``count`` images with ``pipe`` in one batch: ``total`` (including
    decoding for a latent model) and ``decode`` (0 for a pixel model); per image as well."""
    synchronize(pipe.device)
    start = time.perf_counter()
    drawn = pipe.generate(count, sampler=sampler, steps=steps, seed=seed, batch_size=count, decode=False)
    synchronize(pipe.device)
    sampled = time.perf_counter() - start
    decode = 0.0
    if pipe.latent is not None:
        start = time.perf_counter()
        pipe.latent.decode(drawn.to(pipe.device))
        synchronize(pipe.device)
        decode = time.perf_counter() - start
    total = sampled + decode
    return {"total_s": total, "decode_s": decode, "per_image_s": total / count, "decode_per_image_s": decode / count}


def unet_for(preset: str, shape: tuple[int, int, int], device: torch.device, seed: int = 0) -> UNet:
    """The U-Net ``preset`` for ``shape = (C, H, W)`` inputs."""
    torch.manual_seed(seed)
    channels, size, _ = shape
    return UNet.from_preset(preset, image_size=size, in_channels=channels, out_channels=channels).to(device)


def compare(args: argparse.Namespace, space: LatentSpace, images: torch.Tensor, latents: torch.Tensor,
            device: torch.device) -> dict:
    """Training images/s, forward FLOPs and sampling time of pixel vs latent U-Nets of one preset."""
    out = {}
    pixel_shape, latent_shape = tuple(images.shape[1:]), tuple(latents.shape[1:])
    for name, shape, data in (("pixel", pixel_shape, images), ("latent", latent_shape, latents)):
        model = unet_for(args.model, shape, device, args.seed)
        x = torch.zeros(1, *shape, device=device)
        flops = forward_flops(model, x, torch.zeros(1, dtype=torch.long, device=device))
        rate = train_images_per_second(model, data, batch_size=args.batch_size, steps=args.train_steps,
                                       warmup_steps=args.warmup_steps, timesteps=args.timesteps, seed=args.seed)
        diffusion = DiffusionConfig(timesteps=args.timesteps, latent=space.config() if name == "latent" else None)
        pipe = DiffusionPipeline(model.eval(), diffusion, space.image_shape, device,
                                 latent=space.to(device) if name == "latent" else None)
        sampling_seconds(pipe, min(2, args.num_samples), sampler=args.sampler, steps=1)  # warm-up
        timing = sampling_seconds(pipe, args.num_samples, sampler=args.sampler, steps=args.steps, seed=args.seed)
        out[name] = {"shape": list(shape), "forward_flops": flops, "train_images_per_s": rate, **timing}
    decoder_flops = forward_flops(space.autoencoder.decoder, torch.zeros(1, *latent_shape, device=device))
    out["decoder_forward_flops"] = decoder_flops
    out["train_speedup"] = out["latent"]["train_images_per_s"] / out["pixel"]["train_images_per_s"]
    out["sampling_speedup"] = out["pixel"]["per_image_s"] / out["latent"]["per_image_s"]
    out["flops_ratio"] = out["pixel"]["forward_flops"] / out["latent"]["forward_flops"]
    return out


def report_lines(results: dict) -> list[str]:
    """The printed table."""
    vae, cmp = results["autoencoder"], results["comparison"]
    lines = [
        f"autoencoder {vae['key']}: latents {'x'.join(map(str, vae['latent_shape']))} for images "
        f"{'x'.join(map(str, vae['image_shape']))}, scaling factor {vae['scaling_factor']:.4f}",
        f"  one-off costs: training {vae['train_seconds']:.1f} s{' (cached)' if vae['cached'] else ''}, "
        f"encoding {vae['train_images']} training images {vae['encode_seconds']:.1f} s",
        f"  reconstruction on {vae['test_images']} test images: MSE {vae['test']['mse']:.5f}, "
        f"PSNR {vae['test']['psnr']:.2f} dB (L1 {vae['test']['l1']:.4f})",
        f"{'':<8}{'shape':>10}{'fwd MFLOP':>11}{'train img/s':>13}{'sample s/img':>14}{'of which decode':>17}",
    ]
    for name in ("pixel", "latent"):
        r = cmp[name]
        lines.append(f"{name:<8}{'x'.join(map(str, r['shape'])):>10}{r['forward_flops'] / 1e6:>11.1f}"
                     f"{r['train_images_per_s']:>13.1f}{r['per_image_s']:>14.4f}{r['decode_per_image_s']:>17.4f}")
    lines.append(f"latent / pixel: training {cmp['train_speedup']:.2f}x faster, sampling "
                 f"{cmp['sampling_speedup']:.2f}x faster (decoding included), {cmp['flops_ratio']:.1f}x fewer "
                 f"U-Net FLOPs; decoder {cmp['decoder_forward_flops'] / 1e6:.1f} MFLOP per image")
    return lines


# ---------------------------------------------------------------------------


def main(argv=None) -> int:
    args = parse_args(argv)
    device = get_device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    temporary = tempfile.TemporaryDirectory() if args.quick and args.cache is None else None
    cache = Path(temporary.name) if temporary else args.cache
    images, labels = load_tensors(args.dataset, limit=args.limit, progress=False)
    test_images, _ = load_tensors(args.dataset, train=False, limit=args.test_limit, progress=False)

    recipe = AutoencoderRecipe(dataset=args.dataset, epochs=args.vae_epochs, seed=args.seed)
    cached = (cache_dir(cache) / f"{autoencoder_key(images, labels, recipe)}.pt").is_file()
    start = time.perf_counter()
    space = course_autoencoder(images, labels, recipe, root=cache, device=device, progress=not args.quick)
    train_seconds = 0.0 if cached else time.perf_counter() - start
    start = time.perf_counter()
    space.encode(images)  # the one-off encoding, timed (the cached copy is read below)
    encode_seconds = time.perf_counter() - start
    latents = dataset_latents(space, images, labels, root=cache)
    test = reconstruction_error(space.autoencoder, test_images)
    shown = test_images[:32].to(device)
    save_image_grid(torch.cat([shown, space.autoencoder.reconstruct(shown)]).cpu(), args.out / "reconstructions.png",
                    nrow=8)

    results = {
        "dataset": args.dataset, "device": str(device), "settings": {k: str(v) for k, v in vars(args).items()},
        "autoencoder": {
            "key": space.key, "latent_shape": list(space.shape), "image_shape": list(space.image_shape),
            "scaling_factor": space.scaling_factor, "latent_std_after_scaling": float(latents.std()),
            "train_seconds": train_seconds, "cached": cached, "encode_seconds": encode_seconds,
            "train_images": images.shape[0], "test_images": test_images.shape[0], "test": test,
            "parameters": sum(p.numel() for p in space.autoencoder.parameters()),
        },
        "comparison": compare(args, space, images.to(device), latents.to(device), device),
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print("\n".join(report_lines(results)))
    print(f"wrote {args.out / 'results.json'} and {args.out / 'reconstructions.png'}")
    if temporary:
        temporary.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
