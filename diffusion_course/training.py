"""Training a diffusion model: one loop you can read, resume and trust.

The loop is DDPM Algorithm 1 (Ho et al. 2020) with the engineering a real run needs:

    repeat
        x0 ~ data (a shard of a shuffled epoch, optionally flipped left-right)
        t ~ Uniform{0..T-1}   (or Improved DDPM's importance sampler, sec. 3.3)
        eps ~ N(0, I);  x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps
        gradient step on the loss of model(x_t, t)        (see diffusion_course.losses)
        EMA of the weights                                  (see diffusion_course.ema)

Around it: gradient accumulation, gradient clipping, linear learning-rate warm-up, mixed
precision (bf16 autocast, or fp16 with a gradient scaler on CUDA), a sample grid every N
steps, a JSONL metrics log, and atomic checkpoints from which ``resume`` continues
*bit for bit* -- the same weights as if the run had never stopped. That needs every source
of randomness to be either saved or re-derivable:

- the data order of epoch ``e`` is ``randperm(N)`` from a generator seeded with ``seed + e``
  (as PyTorch's DistributedSampler does), so the position in the data stream is just the
  number of micro-batches consumed, ``micro_step``;
- noise, timesteps and flips come from one ``torch.Generator`` per process on the training
  device, whose state is saved;
- dropout uses torch's global generators (CPU and CUDA), whose states are saved, as are
  Python's and NumPy's (unused here, saved for code that adds them);
- model, EMA, optimizer, gradient scaler and the importance sampler's loss history are
  saved; the learning rate is a pure function of the step.

Under ``torchrun`` the same loop runs in K processes with DistributedDataParallel; each
rank reads its own shard of every epoch, and only rank 0 writes files. See
:mod:`diffusion_course.distributed`.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import signal
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .batching import (
    BatchStream,
    dataset_statistics,
    epoch_permutation,
    load_training_data,
)
from .checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint, to_plain
from .data import FLIP_BY_DATASET, default_hflip
from .diffusion import PREDICTION_TYPES, q_sample
from .distributed import DistInfo, all_gather_objects, parameters_in_sync
from .ema import EMA, unwrap_model
from .losses import LOSS_TYPES, TIMESTEP_SAMPLERS, diffusion_loss, learns_variance, make_timestep_sampler
from .sampling import ddpm_sample, save_image_grid
from .schedules import SCHEDULES, NoiseSchedule, get_schedule

PRECISIONS = ("fp32", "bf16", "fp16")
FLIP_CHOICES = ("auto", "on", "off")

METRICS_NAME = "metrics.jsonl"
SAMPLES_DIR = "samples"


class NonFiniteLossError(RuntimeError):
    """The loss or the gradient norm became NaN or infinite; training stopped before the
    optimizer step, so the weights (and the last checkpoint) are still good."""


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Every setting of a training run; plain data, printed at start and stored in checkpoints.

    Length: training stops at whichever comes first of ``epochs``, ``max_steps`` and
    ``max_minutes`` (``None`` = no limit). ``batch_size`` is per process and per forward
    pass; one optimizer step sees ``batch_size * grad_accum * world_size`` images.
    Sample grids use ``sample_steps`` respaced DDPM steps (100: a grid of 64 small-model
    images takes about a minute on a laptop CPU); ``None`` runs all T steps of Algorithm 2.
    ``grad_clip=None`` disables clipping; ``min_snr`` is min-SNR's gamma (``None`` = off).
    """

    # data
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    image_size: int | None = None
    limit: int | None = None
    hflip: str = "auto"
    # diffusion
    timesteps: int = 1000
    schedule: str = "linear"
    prediction: str = "eps"
    loss: str = "simple"
    min_snr: float | None = None
    timestep_sampler: str = "uniform"
    # model
    model: str = "tiny"
    grad_checkpoint: bool = False
    channels_last: bool = False
    compile: bool = False
    # optimisation
    batch_size: int = 128
    grad_accum: int = 1
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 500
    grad_clip: float | None = 1.0
    ema_decay: float = 0.9999
    precision: str = "fp32"
    # how long
    epochs: float | None = None
    max_steps: int | None = None
    max_minutes: float | None = None
    # bookkeeping
    seed: int = 0
    device: str = "auto"
    num_workers: int = 2
    out: str = "runs/default"
    log_every: int = 50
    sample_every: int = 1000
    sample_count: int = 64
    sample_steps: int | None = 100
    checkpoint_every: int = 1000
    progress: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Rebuild from :meth:`to_dict`'s output; unknown keys are an error."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s): {', '.join(unknown)}")
        return cls(**values)

    def describe(self) -> str:
        """One ``name = value`` line per field (nanoGPT style), ready to print."""
        width = max(len(f.name) for f in fields(self))
        return "\n".join(f"{f.name:<{width}} = {getattr(self, f.name)!r}" for f in fields(self))

    def validate(self) -> None:
        """Check choices and ranges; raise a one-line ValueError naming the fix."""
        _choice("dataset", self.dataset, ("mnist", "fashion-mnist", "cifar10", "folder"))
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("prediction", self.prediction, PREDICTION_TYPES)
        _choice("loss", self.loss, LOSS_TYPES)
        _choice("timestep_sampler", self.timestep_sampler, TIMESTEP_SAMPLERS)
        _choice("precision", self.precision, PRECISIONS)
        _choice("hflip", self.hflip, FLIP_CHOICES)
        if self.dataset == "mnist" and self.hflip == "on":
            raise ValueError("hflip='on' is not allowed for mnist: a mirrored digit is not a digit")
        if self.timestep_sampler == "importance" and self.loss == "simple":
            raise ValueError(
                "importance sampling of t needs the variational bound; use loss 'hybrid' or 'vlb'"
            )
        _positive_int("batch_size", self.batch_size)
        _positive_int("grad_accum", self.grad_accum)
        _positive_int("timesteps", self.timesteps, minimum=2)
        _positive_int("sample_count", self.sample_count)
        _positive_int("log_every", self.log_every)
        for name in ("sample_every", "checkpoint_every", "warmup_steps", "num_workers", "seed"):
            _positive_int(name, getattr(self, name), minimum=0)
        for name in ("limit", "max_steps", "image_size"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        if self.sample_steps is not None:
            _positive_int("sample_steps", self.sample_steps)
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay} (0.9999 is typical)")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be positive (or None for no clipping), got {self.grad_clip}")
        if self.min_snr is not None and not self.min_snr > 0:
            raise ValueError(f"min_snr gamma must be positive (the paper uses 5), got {self.min_snr}")
        for name in ("epochs", "max_minutes"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive, got {value}")


def _choice(name: str, value: str, choices) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of: {', '.join(choices)}")


def _positive_int(name: str, value, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def resolve_hflip(config: TrainConfig) -> bool:
    """The flip decision for ``config`` (``"auto"``: the dataset's default, see :data:`FLIP_BY_DATASET`)."""
    if config.hflip == "auto":
        return default_hflip(config.dataset)
    return config.hflip == "on"


# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------


def build_model(config: TrainConfig, channels: int, image_size: int) -> nn.Module:
    """The U-Net preset ``config.model`` for ``channels`` x ``image_size``^2 images.

    A model trained with a learned variance (``hybrid``/``vlb`` losses) gets twice as many
    output channels (Improved DDPM sec. 3.1). Raises ValueError if the preset cannot take
    the image size.
    """
    from .unet import UNet

    out_channels = 2 * channels if learns_variance(config.loss) else channels
    return UNet.from_preset(
        config.model,
        image_size=image_size,
        in_channels=channels,
        out_channels=out_channels,
        grad_checkpoint=config.grad_checkpoint,
    )


def model_config_dict(model: nn.Module) -> dict | None:
    """The model's config as plain data (for checkpoints), or None if it has none."""
    cfg = getattr(unwrap_model(model), "config", None)
    return None if cfg is None else to_plain(cfg)


def load_model_from_checkpoint(
    path: str | Path, *, ema: bool = True, map_location: Any = "cpu"
) -> tuple[nn.Module, dict]:
    """Rebuild the U-Net of a checkpoint with its EMA (or raw) weights, in eval mode.

    Returns ``(model, checkpoint)``; ``checkpoint["config"]`` is the run's TrainConfig dict.
    """
    from .unet import UNet, UNetConfig

    state = load_checkpoint(path, map_location=map_location)
    cfg = dict(state["model_config"])
    for key, value in cfg.items():
        if isinstance(value, list):
            cfg[key] = tuple(value)
    model = UNet(UNetConfig(**cfg))
    model.load_state_dict(state["ema"]["weights"] if ema else state["model"])
    return model.eval(), state


# ---------------------------------------------------------------------------
# Random number generator states
# ---------------------------------------------------------------------------


def capture_rng_state(noise_generator: torch.Generator, device: torch.device) -> dict:
    """This process's RNG states as plain data (tensors, lists, ints)."""
    np_state = np.random.get_state()
    state = {
        "noise": noise_generator.get_state(),
        "torch_cpu": torch.get_rng_state(),
        "python": _listify(random.getstate()),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    if device.type == "cuda":
        state["torch_cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state: dict, noise_generator: torch.Generator, device: torch.device) -> None:
    """Inverse of :func:`capture_rng_state`."""
    noise_generator.set_state(state["noise"].cpu())
    torch.set_rng_state(state["torch_cpu"].cpu())
    random.setstate(_tuplify(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    if device.type == "cuda" and "torch_cuda" in state:
        torch.cuda.set_rng_state(state["torch_cuda"].cpu(), device)


def _listify(value):
    if isinstance(value, (tuple, list)):
        return [_listify(v) for v in value]
    return value


def _tuplify(value):
    if isinstance(value, list):
        return tuple(_tuplify(v) for v in value)
    return value


# ---------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------


@dataclass
class TrainResult:
    """How a run ended. ``reason`` is ``finished``, ``time_limit`` or ``interrupted``;
    ``images_per_second`` is this run's mean training throughput (all processes, time spent
    sampling grids and saving checkpoints excluded); ``history`` holds the metrics-log records."""

    step: int
    reason: str
    checkpoint: Path | None
    last_loss: float | None
    images_per_second: float | None
    replicas_in_sync: bool | None = None
    history: list[dict] = field(default_factory=list)


class Trainer:
    """Trains ``model`` on ``source`` according to ``config``.

    Args:
        config: the run's :class:`TrainConfig` (validated here).
        model: a network ``model(x_t [B,C,H,W], t [B]) -> [B, C or 2C, H, W]``, on any device.
        source: ``(images [N,C,H,W] in [-1,1], labels [N])`` tensors, or a map-style Dataset
            of ``(image, label)`` pairs (see :class:`BatchStream`).
        device: the training device.
        data_stats: plain-data description of the data, stored in checkpoints.
        info: this process's place in a torchrun job (default: single process).
        callbacks: functions ``callback(trainer, record)`` called on rank 0 after each
            optimizer step with ``record = {"step", "loss", "lr", ...}``.

    Use :meth:`train` to run, :meth:`save` / :meth:`load_state` for checkpoints.
    """

    def __init__(
        self,
        config: TrainConfig,
        model: nn.Module,
        source,
        *,
        device: torch.device | str = "cpu",
        data_stats: dict | None = None,
        info: DistInfo | None = None,
        callbacks=(),
    ) -> None:
        config.validate()
        self.config = config
        self.device = torch.device(device)
        self.info = info or DistInfo()
        self.callbacks = list(callbacks)
        self.out = Path(config.out)
        self.checkpoint_path = self.out / CHECKPOINT_NAME
        self.schedule: NoiseSchedule = get_schedule(config.schedule, config.timesteps)
        self.flip = resolve_hflip(config)
        self.autocast_dtype = check_precision(config.precision, self.device)
        self.data_stats = data_stats or {}

        self.model = model.to(self.device)
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema = EMA(self.model, decay=config.ema_decay)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=config.precision == "fp16")
        self.sampler = make_timestep_sampler(config.timestep_sampler, config.timesteps)

        # what forward() runs: DDP and/or torch.compile wrap the same parameters
        self.train_model: nn.Module = self.model
        if self.info.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if config.compile:
            self.train_model = torch.compile(self.train_model)

        self.stream = BatchStream(
            source,
            config.batch_size,
            seed=config.seed,
            info=self.info,
            num_workers=config.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        self.noise_generator = torch.Generator(device=self.device)
        self.noise_generator.manual_seed(config.seed + 1_000_003 * self.info.rank)
        self.step = 0
        self.micro_step = 0
        self.elapsed_before = 0.0  # seconds trained by earlier runs of a resumed job
        self.last_checkpoint: Path | None = None
        self._last_checkpoint_step = -1
        self._stop_request: str | None = None
        self._run_start: float | None = None
        self._deadline: float | None = None  # perf_counter() time at which --max-minutes runs out

    # -- length of the run --------------------------------------------------

    def total_steps(self) -> int | None:
        """The step at which training ends (``None``: only time or Ctrl-C ends it)."""
        limits = []
        if self.config.max_steps is not None:
            limits.append(self.config.max_steps)
        if self.config.epochs is not None:
            micro = self.config.epochs * self.stream.batches_per_epoch
            limits.append(math.ceil(micro / self.config.grad_accum))
        return min(limits) if limits else None

    def lr_at(self, step: int) -> float:
        """Linear warm-up from ``lr / warmup_steps`` to ``lr`` over ``warmup_steps``, then constant."""
        warm = self.config.warmup_steps
        if warm == 0:
            return self.config.lr
        return self.config.lr * min(1.0, (step + 1) / warm)

    @property
    def images_per_step(self) -> int:
        """Images per optimizer step over all processes."""
        return self.config.batch_size * self.config.grad_accum * self.info.world_size

    # -- one optimizer step -------------------------------------------------

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        if not self.flip:
            return x
        flip = torch.rand(x.shape[0], generator=self.noise_generator, device=self.device) < 0.5
        return torch.where(flip[:, None, None, None], x.flip(-1), x)

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def train_step(self, micro_batches: list[tuple[int, torch.Tensor, torch.Tensor]]) -> dict:
        """One optimizer step over ``grad_accum`` micro-batches ``(micro_step, images, labels)``.

        Returns a record ``{"step", "loss", "lr", "grad_norm", ...}`` (``step`` counted after
        the update). Raises :class:`NonFiniteLossError` *before* touching the weights if the
        loss or the gradient norm is not finite.
        """
        cfg = self.config
        self.train_model.train()
        lr = self.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        accum = len(micro_batches)
        total = torch.zeros((), device=self.device)
        mse_total = torch.zeros((), device=self.device)
        vlb_total = torch.zeros((), device=self.device)
        seen_t, seen_vlb = [], []
        for i, (_, images, _labels) in enumerate(micro_batches):
            x0 = self._augment(images.to(self.device, non_blocking=True).float())
            t, weights = self.sampler.sample(
                x0.shape[0], generator=self.noise_generator, device=self.device
            )
            noise = torch.randn(x0.shape, generator=self.noise_generator, device=self.device)
            x_t = q_sample(x0, t, noise, self.schedule)
            if cfg.channels_last:
                x_t = x_t.contiguous(memory_format=torch.channels_last)
            last = i == accum - 1
            # DDP: only the last micro-batch of an accumulation all-reduces the gradients
            sync = contextlib.nullcontext()
            if self.info.enabled and not last and hasattr(self.train_model, "no_sync"):
                sync = self.train_model.no_sync()
            with sync:
                with self._autocast():
                    output = self.train_model(x_t, t)
                out = diffusion_loss(
                    output,
                    x0,
                    x_t,
                    noise,
                    t,
                    self.schedule,
                    prediction_type=cfg.prediction,
                    loss_type=cfg.loss,
                    min_snr_gamma=cfg.min_snr,
                    weights=weights,
                )
                self.scaler.scale(out.loss / accum).backward()
            total += out.loss.detach() / accum
            mse_total += out.mse.mean() / accum
            if out.vlb is not None:
                vlb_total += out.vlb.mean() / accum
                seen_t.append(t)
                seen_vlb.append(out.vlb)

        self.scaler.unscale_(self.optimizer)
        max_norm = cfg.grad_clip if cfg.grad_clip is not None else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        if self._deadline is not None and time.perf_counter() >= self._deadline:
            self._stop_request = self._stop_request or "time_limit"
        # one collective per step: mean losses over ranks, and whether any rank wants to stop
        # (so that all ranks stop after the same step and can save together)
        flags = [float(self._stop_request == "time_limit"), float(self._stop_request == "interrupted")]
        packed = torch.cat([
            torch.stack([total, mse_total, vlb_total, grad_norm.float().to(self.device)]),
            torch.tensor(flags, device=self.device),
        ])
        if self.info.enabled:
            dist.all_reduce(packed)
            # the grad norm is identical on every rank after DDP's all-reduce; averaging keeps it
            packed[:4] /= self.info.world_size
        loss, mse, vlb, norm, time_up, interrupted = packed.tolist()
        if interrupted > 0:
            self._stop_request = "interrupted"
        elif time_up > 0:
            self._stop_request = "time_limit"
        if not math.isfinite(loss) or (not math.isfinite(norm) and cfg.precision != "fp16"):
            raise NonFiniteLossError(self._non_finite_message(micro_batches, loss, norm))

        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.model)
        if seen_t:
            t_all, vlb_all = torch.cat(seen_t), torch.cat(seen_vlb)
            if self.info.enabled:  # every rank must keep the same sampler history
                t_all = torch.cat(_all_gather_tensor(t_all, self.info))
                vlb_all = torch.cat(_all_gather_tensor(vlb_all, self.info))
            self.sampler.update(t_all, vlb_all)
        self.step += 1
        self.micro_step = micro_batches[-1][0] + 1
        record = {"step": self.step, "loss": loss, "lr": lr, "grad_norm": norm}
        if cfg.loss != "simple":
            record.update(mse=mse, vlb=vlb)
        return record

    def _non_finite_message(self, micro_batches, loss: float, norm: float) -> str:
        epoch, first = self.stream.locate(micro_batches[0][0])
        _, last = self.stream.locate(micro_batches[-1][0])
        what = f"loss is {loss}" if not math.isfinite(loss) else f"gradient norm is {norm}"
        batches = f"batch {first}" if first == last else f"batches {first}-{last}"
        good = (
            f"last good checkpoint: {self.last_checkpoint} (step {self._last_checkpoint_step})"
            if self.last_checkpoint is not None
            else "no checkpoint was saved yet"
        )
        hints = ["a lower --lr"]
        if self.config.grad_clip is None:
            hints.append("--grad-clip 1.0")
        if self.config.precision != "fp32":
            hints.append("--precision fp32")
        return (
            f"non-finite training loss at step {self.step + 1} (epoch {epoch}, {batches} of "
            f"{self.stream.batches_per_epoch}): {what}; {good}; try {' or '.join(hints)}"
        )

    # -- checkpoints -------------------------------------------------------

    def state_dict(self) -> dict:
        """Everything needed to continue bit for bit. Collective under DDP: all ranks call it."""
        rng = all_gather_objects(
            capture_rng_state(self.noise_generator, self.device), self.info
        )
        return {
            "format": "diffusion-course/checkpoint",
            "version": 1,
            "step": self.step,
            "micro_step": self.micro_step,
            "epoch": self.stream.locate(self.micro_step)[0],
            "batches_per_epoch": self.stream.batches_per_epoch,
            "world_size": self.info.world_size,
            "elapsed_seconds": self.elapsed_before + self._elapsed_this_run(),
            "model": unwrap_model(self.model).state_dict(),
            "model_config": model_config_dict(self.model),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "timestep_sampler": self.sampler.state_dict(),
            "rng": [_to_cpu(r) for r in rng],
            "config": to_plain(self.config),
            "data_stats": to_plain(self.data_stats),
        }

    def save(self, path: Path | None = None) -> Path | None:
        """Write a checkpoint atomically (rank 0 writes; all ranks must call). Returns the path."""
        state = self.state_dict()
        path = Path(path) if path is not None else self.checkpoint_path
        if self.info.is_main:
            save_checkpoint(state, path)
        self.last_checkpoint = path
        self._last_checkpoint_step = self.step
        return path

    def load_state(self, state: dict) -> None:
        """Restore a :meth:`state_dict` (from :func:`~diffusion_course.checkpoint.load_checkpoint`)."""
        unwrap_model(self.model).load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.ema.module.to(self.device)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.sampler.load_state_dict(state["timestep_sampler"])
        self.step = int(state["step"])
        self._last_checkpoint_step = self.step
        self.elapsed_before = float(state.get("elapsed_seconds", 0.0))
        same_layout = (
            int(state["world_size"]) == self.info.world_size
            and int(state["batches_per_epoch"]) == self.stream.batches_per_epoch
        )
        if same_layout:
            self.micro_step = int(state["micro_step"])
            restore_rng_state(state["rng"][self.info.rank], self.noise_generator, self.device)
        else:
            # another number of processes: continue at the next epoch with fresh per-rank noise
            self.micro_step = (int(state["epoch"]) + 1) * self.stream.batches_per_epoch
            self.noise_generator.manual_seed(self.config.seed + 1_000_003 * self.info.rank + self.step)
            self._say(
                f"note: checkpoint was written by {state['world_size']} process(es) with "
                f"{state['batches_per_epoch']} batches per epoch; continuing from epoch "
                f"{int(state['epoch']) + 1} (not bit-exact)"
            )

    def resume(self, path: Path | None = None) -> None:
        """Load the checkpoint at ``path`` (default: ``out/checkpoint.pt``) into this trainer."""
        path = Path(path) if path is not None else self.checkpoint_path
        # CPU first: RNG states must stay CPU byte tensors; weights are copied to the device
        self.load_state(load_checkpoint(path, map_location="cpu"))
        self.last_checkpoint = path

    # -- samples and logs ---------------------------------------------------

    @torch.no_grad()
    def sample(self, count: int | None = None, seed: int | None = None) -> torch.Tensor:
        """Images from the EMA model, ``[count, C, H, W]`` in [-1, 1], with a fixed seed
        (the config's by default) so grids from different steps are comparable."""
        cfg = self.config
        count = count or cfg.sample_count
        gen = torch.Generator(device=self.device).manual_seed(cfg.seed if seed is None else seed)
        c, h, w = self._image_shape()
        with self._autocast():
            return ddpm_sample(
                self.ema.module,
                self.schedule,
                (count, c, h, w),
                generator=gen,
                steps=None if cfg.sample_steps is None else min(cfg.sample_steps, cfg.timesteps),
                prediction_type=cfg.prediction,
                device=self.device,
            )

    def save_samples(self) -> Path:
        path = self.out / SAMPLES_DIR / f"step_{self.step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image_grid(self.sample(), path)
        return path

    def _image_shape(self) -> tuple[int, int, int]:
        if self.stream.images is not None:
            return tuple(self.stream.images.shape[1:])
        return tuple(self.stream.dataset[0][0].shape)

    def _log(self, record: dict) -> None:
        with open(self.out / METRICS_NAME, "a") as f:
            f.write(json.dumps(record) + "\n")

    def _say(self, message: str) -> None:
        if self.info.is_main:
            from tqdm.auto import tqdm

            tqdm.write(message)

    def _trim_metrics(self) -> None:
        """On resume, drop log lines from steps after the checkpoint (they will be redone)."""
        path = self.out / METRICS_NAME
        if not path.exists():
            return
        keep = []
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError, KeyError, TypeError):
                if json.loads(line)["step"] <= self.step:
                    keep.append(line)
        path.write_text("".join(line + "\n" for line in keep))

    def _elapsed_this_run(self) -> float:
        start = self._run_start
        return 0.0 if start is None else time.perf_counter() - start

    # -- the loop -----------------------------------------------------------

    def train(self) -> TrainResult:
        """Train until the step/epoch/time limit or Ctrl-C; always ends with a checkpoint.

        Ctrl-C (or SIGTERM) finishes the current step, saves, and returns with
        ``reason="interrupted"`` (another Ctrl-C two seconds later aborts at once, keeping the
        last checkpoint). A non-finite loss raises :class:`NonFiniteLossError` without saving.
        """
        cfg = self.config
        if self.info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            self._trim_metrics()
        total = self.total_steps()
        self._run_start = time.perf_counter()
        self._deadline = None if cfg.max_minutes is None else self._run_start + 60 * cfg.max_minutes
        history: list[dict] = []
        window: list[dict] = []
        window_time = 0.0
        train_time, steps_done = 0.0, 0  # this run's time inside train_step, for images/s
        reason = "finished"
        last_loss = None
        progress = None
        if self.info.is_main and cfg.progress:
            from tqdm.auto import tqdm

            progress = tqdm(total=total, initial=self.step, desc="training", unit="step",
                            dynamic_ncols=True)
        stream = self.stream.iterate(self.micro_step)
        with self._stop_signals():
            try:
                while total is None or self.step < total:
                    tick = time.perf_counter()
                    batches = [next(stream) for _ in range(cfg.grad_accum)]
                    record = self.train_step(batches)
                    spent = time.perf_counter() - tick
                    window_time += spent
                    train_time += spent
                    steps_done += 1
                    window.append(record)
                    last_loss = record["loss"]
                    if progress is not None:
                        progress.update(1)
                        progress.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
                    if self.info.is_main:
                        for callback in self.callbacks:
                            callback(self, record)
                    if self.step % cfg.log_every == 0 or self._stop_request or self.step == total:
                        rate = len(window) * self.images_per_step / max(window_time, 1e-9)
                        summary = _summarise(window, self.step, rate, self)
                        history.append(summary)
                        if self.info.is_main:
                            self._log(summary)
                        window, window_time = [], 0.0
                    if self._stop_request:
                        reason = self._stop_request
                        break
                    if cfg.sample_every and self.step % cfg.sample_every == 0 and self.info.is_main:
                        self.save_samples()
                    if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                        self.save()
            finally:
                if progress is not None:
                    progress.close()
        if self.step != self._last_checkpoint_step:
            self.save()
        if reason == "interrupted":
            self._say(f"interrupted: checkpoint saved at step {self.step} to {self.last_checkpoint}")
        elif reason == "time_limit":
            self._say(f"time limit reached: checkpoint saved at step {self.step} to {self.last_checkpoint}")
        if cfg.sample_every and self.info.is_main and reason != "interrupted" and self.step > 0:
            if self.step % cfg.sample_every != 0:
                self.save_samples()
        in_sync = None
        if self.info.enabled:
            in_sync = parameters_in_sync(self.model, self.info)
            if not in_sync:
                raise RuntimeError("DDP replicas diverged: parameters differ between ranks")
            self._say(f"DDP check: parameters identical on all {self.info.world_size} ranks")
        rate = steps_done * self.images_per_step / train_time if steps_done else None
        return TrainResult(self.step, reason, self.last_checkpoint, last_loss, rate, in_sync, history)

    @contextlib.contextmanager
    def _stop_signals(self):
        """Ctrl-C (SIGINT) or SIGTERM: finish this step, save, stop. A second one aborts at once.

        SIGTERM is what torchrun sends its workers when it is interrupted, and what batch
        schedulers send before they kill a job, so it gets the same graceful treatment.
        """
        if threading.current_thread() is not threading.main_thread():
            yield  # signal handlers can only be installed from the main thread
            return
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        first = []

        def handler(signum, frame):
            if self._stop_request == "interrupted":
                # under torchrun a worker gets Ctrl-C twice (from the terminal and forwarded by
                # the launcher): only a signal well after the first one means "abort now"
                if time.monotonic() - first[0] < 2.0:
                    return
                for sig, old in previous.items():
                    signal.signal(sig, old)
                raise KeyboardInterrupt
            first.append(time.monotonic())
            self._stop_request = "interrupted"
            name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            self._say(f"{name}: finishing this step and saving a checkpoint (Ctrl-C again to abort)")

        for sig in previous:
            signal.signal(sig, handler)
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)


def _summarise(window: list[dict], step: int, rate: float, trainer: Trainer) -> dict:
    keys = [k for k in window[-1] if k not in ("step", "lr")]
    summary = {"step": step, "epoch": trainer.stream.locate(trainer.micro_step)[0]}
    for key in keys:
        summary[key] = sum(r[key] for r in window) / len(window)
    summary["lr"] = window[-1]["lr"]
    summary["images_per_s"] = rate
    summary["elapsed_s"] = trainer.elapsed_before + trainer._elapsed_this_run()
    return summary


def _all_gather_tensor(x: torch.Tensor, info: DistInfo) -> list[torch.Tensor]:
    out = [torch.empty_like(x) for _ in range(info.world_size)]
    dist.all_gather(out, x.contiguous())
    return out


def _to_cpu(value):
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_cpu(v) for v in value]
    return value


def check_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; a clear error where unsupported."""
    if precision == "fp32":
        return None
    if precision == "fp16":
        if device.type != "cuda":
            raise ValueError(
                f"precision fp16 needs a CUDA GPU (it relies on a gradient scaler); "
                f"use bf16 or fp32 on {device.type}"
            )
        return torch.float16
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("this GPU does not support bf16; use --precision fp16 or fp32")
    return torch.bfloat16


__all__ = [
    "FLIP_BY_DATASET",
    "PRECISIONS",
    "BatchStream",
    "NonFiniteLossError",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "build_model",
    "capture_rng_state",
    "dataset_statistics",
    "epoch_permutation",
    "load_model_from_checkpoint",
    "load_training_data",
    "resolve_hflip",
    "restore_rng_state",
]
