"""Measuring training speed: images per second and model-FLOP utilisation (MFU).

Shared by the scripts in ``benchmarks/`` (which must not import each other). A training
step here is what the :class:`~diffusion_course.training.Trainer` does at its core --
forward, eps-prediction MSE, backward, AdamW -- on one fixed random batch, so the number
is the model's speed with no data loading, EMA, logging or host synchronisation. Run the
real trainer next to it to see how much those cost.

MFU (Chowdhery et al. 2022, *PaLM*, appendix B) is the model FLOPs a step needs divided by
what the hardware could do in the same time: ``3 x forward FLOPs x images/s / peak``. The
factor 3 is the forward pass plus a backward pass that costs about twice as much (one
product for the input gradients, one for the weight gradients). Forward FLOPs come from
:func:`~diffusion_course.unet.forward_flops` (multiply-add = 2 FLOPs).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .unet import UNet, forward_flops

DIFFUSERS_OPPONENTS: dict[str, dict] = {
    # diffusers' default block layout (a plain ResNet level at full resolution, attention levels
    # below it, two ResNet blocks per level) cut to three levels, because 28 -> 14 -> 7 cannot
    # be halved again; every other argument at its default unless the widths force it.
    "small": dict(  # the widths of the MNIST model of Hugging Face's diffusion course, unit 1
        block_out_channels=(32, 64, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    ),
    "tiny": dict(  # the same layout narrowed to tiny's parameter count; 16- and 24-channel levels
        # cannot be split into the default 32 GroupNorm groups, so 8 (tiny's own setting)
        block_out_channels=(16, 24, 24),
        layers_per_block=2,
        norm_num_groups=8,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    ),
}
"""The diffusers ``UNet2DModel`` the CPU benchmarks race against each course preset, at equal
parameters: 1.71 M against ``small``'s 1.65 M (3.3 % apart); 0.269 M against ``tiny``'s 0.267 M
(0.7 % apart, 28x28x1)."""

DIFFUSERS_OPPONENT = DIFFUSERS_OPPONENTS["small"]
"""The opponent of the ``small`` preset (``benchmarks/train_quality.py`` races it)."""


def diffusers_opponent(size: int, channels: int, preset: str = "small"):
    """The ``UNet2DModel`` of :data:`DIFFUSERS_OPPONENTS` for ``preset`` and ``channels`` x ``size``^2 images
    (needs diffusers, a test-only dependency)."""
    from diffusers import UNet2DModel

    if preset not in DIFFUSERS_OPPONENTS:
        raise ValueError(f"no diffusers opponent for preset {preset!r}; choose one of {', '.join(DIFFUSERS_OPPONENTS)}")
    return UNet2DModel(sample_size=size, in_channels=channels, out_channels=channels, **DIFFUSERS_OPPONENTS[preset])


PEAK_BF16_TFLOPS: dict[str, float] = {
    # dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets; the order
    # matters: a name is matched by the first key it contains, so variants come first
    "H200 NVL": 835.0,
    "H200": 989.0,  # SXM
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.0,  # SXM ("NVIDIA H100 80GB HBM3")
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10G": 70.0,
    "RTX 4090": 165.0,
}
"""Peak dense bf16 TFLOP/s by a substring of ``torch.cuda.get_device_name()``."""


def peak_tflops(device_name: str) -> float | None:
    """The card's peak dense bf16 TFLOP/s from :data:`PEAK_BF16_TFLOPS`, or None if unknown."""
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in device_name:
            return value
    return None


def model_flops_utilisation(forward_flops_per_image: float, images_per_second: float, peak: float) -> float:
    """MFU as a fraction in [0, 1]: ``3 x forward FLOPs x images/s / (peak TFLOP/s x 1e12)``."""
    return 3 * forward_flops_per_image * images_per_second / (peak * 1e12)


@dataclass
class SpeedResult:
    """One measurement of :func:`training_speed`."""

    preset: str
    batch: int
    steps: int  # timed steps
    images_per_second: float
    flops_per_image: int  # forward FLOPs of one image
    warmup_seconds: float  # compiling (if any) plus the warm-up steps

    @property
    def train_tflops(self) -> float:
        """Model TFLOP/s achieved (3 x forward FLOPs x images/s)."""
        return 3 * self.flops_per_image * self.images_per_second / 1e12


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so wall-clock times are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def training_speed(
    preset: str,
    device: torch.device | str,
    *,
    batch: int = 128,
    steps: int = 20,
    warmup_steps: int = 3,
    precision: str = "bf16",
    channels_last: bool = True,
    compile_model: bool = False,
    compile_backend: str = "inductor",
    fused_adamw: bool = False,
    seed: int = 0,
) -> SpeedResult:
    """Train the U-Net ``preset`` on one random batch and return its images per second.

    ``precision`` is ``"bf16"`` (autocast) or ``"fp32"``; ``channels_last`` converts the
    model and the input; ``compile_model`` wraps the model in ``torch.compile`` (default
    mode, ``compile_backend``). The first ``warmup_steps`` steps -- which compile, pick
    cuDNN algorithms and fill the allocator -- are timed separately and not counted.
    ``fused_adamw`` uses the fused CUDA AdamW; the default matches the Trainer's optimizer.
    """
    if precision not in ("bf16", "fp32"):
        raise ValueError(f"precision must be 'bf16' or 'fp32', got {precision!r}")
    if batch < 1 or steps < 1 or warmup_steps < 1:
        raise ValueError("batch, steps and warmup_steps must be positive")
    device = torch.device(device)
    torch.manual_seed(seed)
    model = UNet.from_preset(preset)
    cfg = model.config
    flops_per_image = forward_flops(model, batch=1)  # counted on the plain model, before compiling
    model = model.to(device).train()
    shape = (batch, cfg.in_channels, cfg.image_size, cfg.image_size)
    gen = torch.Generator(device=device).manual_seed(seed)
    x_t = torch.randn(shape, device=device, generator=gen)
    noise = torch.randn(shape, device=device, generator=gen)
    t = torch.randint(0, 1000, (batch,), device=device, generator=gen)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x_t = x_t.contiguous(memory_format=torch.channels_last)
        noise = noise.contiguous(memory_format=torch.channels_last)
    options = {"fused": True} if fused_adamw and device.type == "cuda" else {}
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, **options)
    forward = torch.compile(model, backend=compile_backend) if compile_model else model
    dtype = torch.bfloat16 if precision == "bf16" else None

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = forward(x_t, t)
        loss = torch.nn.functional.mse_loss(out.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    start = time.perf_counter()
    for _ in range(warmup_steps):
        step()
    synchronize(device)
    warmup = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    rate = batch * steps / (time.perf_counter() - start)
    return SpeedResult(preset, batch, steps, rate, flops_per_image, warmup)


__all__ = [
    "PEAK_BF16_TFLOPS",
    "SpeedResult",
    "model_flops_utilisation",
    "peak_tflops",
    "synchronize",
    "training_speed",
]
