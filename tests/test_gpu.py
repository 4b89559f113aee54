"""The CUDA paths of training and sampling, on a real GPU (skipped without one).

What the CPU tests cannot reach: fp16 autocast with its gradient scaler (CUDA only), bf16
autocast and channels_last on tensor cores, the CUDA random generator that dropout and the
trainer's noise use (its state must survive a checkpoint for resume to be exact), and
sampling with a CUDA ``torch.Generator``. Small synthetic images (16x16) and the ``tiny``
U-Net (with dropout on, so the CUDA generator matters) keep the whole file to seconds on
an H100. ``benchmarks/gpu_check.py`` runs it as one part of the GPU readiness check.
"""

from __future__ import annotations

import math
import os
import shutil

import pytest
import torch

# cuBLAS is deterministic only with a fixed workspace configuration; it reads this when its
# first handle is created, so it is set before any test touches the GPU.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

from diffusion_course.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from diffusion_course.runtime import (  # noqa: E402
    capture_rng_state,
    restore_rng_state,
    seed_everything,  # noqa: E402
)
from diffusion_course.sampling import ddpm_sample  # noqa: E402
from diffusion_course.schedules import get_schedule  # noqa: E402
from diffusion_course.trainer import Trainer  # noqa: E402
from diffusion_course.training import TrainConfig  # noqa: E402
from diffusion_course.unet import UNet  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

SIZE = 16
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def deterministic_cuda():
    """Deterministic kernels for the duration of a test (cuDNN picks its algorithm by
    heuristics, not by timing, and ops without a deterministic version warn)."""
    before = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
              torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[:2]
    torch.use_deterministic_algorithms(before[2], warn_only=before[3])


def _data(n=48, seed=1, device=CUDA):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, SIZE, SIZE, generator=g) * 2 - 1
    return images.to(device), torch.zeros(n, dtype=torch.long, device=device)


def make_trainer(out, *, dropout=0.1, data=None, **overrides) -> Trainer:
    """A CUDA Trainer on synthetic 16x16 RGB data (held on the GPU) with the real tiny U-Net."""
    settings = dict(
        dataset="cifar10", out=str(out), batch_size=8, max_steps=6, warmup_steps=2, log_every=1,
        sample_every=0, checkpoint_every=0, progress=False, timesteps=100, hflip="on",
        num_workers=0, device="cuda", lr=1e-3,
    )
    settings.update(overrides)
    config = TrainConfig(**settings)
    seed_everything(config.seed)
    torch.cuda.manual_seed_all(config.seed)
    model = UNet.from_preset("tiny", image_size=SIZE, in_channels=3, out_channels=3, dropout=dropout)
    return Trainer(config, model, data if data is not None else _data(), device=CUDA)


def _forward_dtypes(trainer: Trainer) -> list[torch.dtype]:
    """Record the dtype of every training forward pass's output."""
    seen: list[torch.dtype] = []
    trainer.model.register_forward_hook(lambda module, args, output: seen.append(output.dtype))
    return seen


def _weights(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _max_difference(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters(), strict=True))


# --- mixed precision -----------------------------------------------------------------------------


def test_fp16_trains_with_a_gradient_scaler_that_resumes_exactly(tmp_path):
    straight = make_trainer(tmp_path / "straight", precision="fp16", max_steps=8)
    straight.train()
    trainer = make_trainer(tmp_path / "run", precision="fp16")
    dtypes = _forward_dtypes(trainer)
    before = _weights(trainer.model)
    result = trainer.train()

    assert result.step == 6 and all(math.isfinite(h["loss"]) for h in result.history)
    assert dtypes and set(dtypes) == {torch.float16}, "fp16 must run the forward pass in float16"
    assert trainer.scaler.is_enabled()
    assert any(not torch.equal(p, q) for p, q in zip(before, trainer.model.parameters(), strict=True))
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters()), "weights stay float32"

    # the scaler's state (scale, steps since the last overflow) is in the checkpoint and comes back
    scaler_state = trainer.scaler.state_dict()
    assert load_checkpoint(result.checkpoint)["scaler"] == scaler_state
    resumed = make_trainer(tmp_path / "run", precision="fp16", max_steps=8)
    assert resumed.scaler.state_dict() != scaler_state  # a fresh scaler: initial scale, no steps counted
    resumed.resume()
    assert resumed.scaler.state_dict() == scaler_state
    resumed.train()
    assert resumed.scaler.state_dict() == straight.scaler.state_dict()


def test_fp16_overflow_skips_the_step_and_halves_the_scale(tmp_path):
    """The scaler's job: with a scale so large that the fp16 gradients overflow, the optimizer
    step is skipped (weights untouched), the scale halves, and training goes on."""
    trainer = make_trainer(tmp_path, precision="fp16", max_steps=2)
    trainer.train()
    trainer.scaler.update(new_scale=2.0**100)  # float32 holds it; float16 gradients cannot
    before = _weights(trainer.model)
    stream = trainer.stream.iterate(trainer.micro_step)
    record = trainer.train_step([next(stream)])

    assert math.isfinite(record["loss"]) and not math.isfinite(record["grad_norm"])
    assert all(torch.equal(p, q) for p, q in zip(before, trainer.model.parameters(), strict=True))
    assert trainer.scaler.get_scale() == 2.0**99
    assert trainer.step == 3


def test_bf16_autocast_trains_and_keeps_float32_weights(tmp_path):
    trainer = make_trainer(tmp_path, precision="bf16")
    dtypes = _forward_dtypes(trainer)
    before = _weights(trainer.model)
    result = trainer.train()

    assert result.step == 6 and all(math.isfinite(h["loss"]) for h in result.history)
    assert dtypes and set(dtypes) == {torch.bfloat16}
    assert not trainer.scaler.is_enabled()  # bf16 has float32's range: no loss scaling
    assert any(not torch.equal(p, q) for p, q in zip(before, trainer.model.parameters(), strict=True))
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert all(p.dtype == torch.float32 for p in trainer.ema.module.parameters())


def test_channels_last_bf16_trains_like_the_default_layout(tmp_path):
    nchw = make_trainer(tmp_path / "nchw", precision="bf16", dropout=0.0)
    nhwc = make_trainer(tmp_path / "nhwc", precision="bf16", dropout=0.0, channels_last=True)
    convs = [p for p in nhwc.model.parameters() if p.ndim == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert not all(p.is_contiguous(memory_format=torch.channels_last) for p in nchw.model.parameters()
                   if p.ndim == 4)
    a, b = nchw.train(), nhwc.train()

    assert b.step == 6 and all(math.isfinite(h["loss"]) for h in b.history)
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in nhwc.model.parameters() if p.ndim == 4)
    # same data, noise and weights: only the kernels' summation order and bf16 rounding differ
    assert b.history[0]["loss"] == pytest.approx(a.history[0]["loss"], rel=0.02)
    samples = nhwc.preview(count=4, seed=0)
    assert samples.shape == (4, 3, SIZE, SIZE) and samples.device.type == "cuda"
    assert torch.isfinite(samples).all()


# --- random number generators and exact resume ----------------------------------------------------


def test_cuda_rng_state_round_trips_through_a_checkpoint(tmp_path):
    noise = torch.Generator(device=CUDA).manual_seed(3)
    torch.cuda.manual_seed(5)
    state = capture_rng_state(noise)
    assert "torch_cuda" in state

    def draw():
        return (torch.randn(1000, device=CUDA, generator=noise),  # the trainer's noise generator
                torch.nn.functional.dropout(torch.ones(1000, device=CUDA), 0.5),  # the global CUDA one
                torch.rand(10))  # the global CPU one

    first = draw()
    save_checkpoint({"rng": state}, tmp_path / "rng.pt")  # what resume reads: CPU tensors, weights_only
    assert restore_rng_state(load_checkpoint(tmp_path / "rng.pt", map_location="cpu")["rng"], noise)
    again = draw()
    assert all(torch.equal(x, y) for x, y in zip(first, again, strict=True))
    assert not torch.equal(draw()[1], again[1])  # the generators really moved on


def test_resume_on_cuda_gives_the_same_weights_as_a_straight_run(tmp_path):
    """6 steps straight == 3 steps, checkpoint, a new trainer, resume, 3 more steps (dropout and
    random flips on). With deterministic kernels the same operations in the same order give
    the same bits on one GPU, as on the CPU; the message shows how far apart they are if not."""
    straight = make_trainer(tmp_path / "a")
    straight.train()
    halfway = make_trainer(tmp_path / "b", max_steps=3).train().checkpoint
    shutil.copy(halfway, tmp_path / "step3.pt")  # the resumed run will overwrite the original
    resumed = make_trainer(tmp_path / "b")
    resumed.resume(tmp_path / "step3.pt")
    assert resumed.step == 3
    resumed.train()
    gap = _max_difference(straight.model, resumed.model)
    assert gap == 0.0, f"resumed weights differ from the straight run's by up to {gap:.3g}"
    assert _max_difference(straight.ema.module, resumed.ema.module) == 0.0

    # the CUDA generator is part of it: disturb it after resuming and dropout draws other masks
    disturbed = make_trainer(tmp_path / "c")
    disturbed.resume(tmp_path / "step3.pt")
    torch.cuda.manual_seed(12345)
    disturbed.train()
    assert _max_difference(straight.model, disturbed.model) > 0.0


# --- sampling ------------------------------------------------------------------------------------


def test_sampling_on_cuda_is_reproducible_with_a_cuda_generator():
    torch.manual_seed(0)
    model = UNet.from_preset("tiny", image_size=SIZE, in_channels=3, out_channels=3).to(CUDA).eval()
    for p in model.parameters():  # the output layer starts at zero; make the model say something
        torch.nn.init.normal_(p, std=0.05)
    schedule = get_schedule("linear", 100)

    def sample(seed: int) -> torch.Tensor:
        gen = torch.Generator(device=CUDA).manual_seed(seed)
        return ddpm_sample(model, schedule, (4, 3, SIZE, SIZE), generator=gen, steps=10, device=CUDA)

    a, b, c = sample(0), sample(0), sample(1)
    assert a.device.type == "cuda" and a.shape == (4, 3, SIZE, SIZE)
    assert torch.isfinite(a).all() and a.abs().max() <= 1.0
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        d = sample(0)
    assert d.dtype == torch.float32 and (d - a).abs().mean() < 0.05  # bf16 changes rounding only
