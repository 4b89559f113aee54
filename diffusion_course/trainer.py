"""The training loop: one loop for every model in the course, that you can read, resume and trust.

What is learned is decided by an *objective*, a small object the loop calls once per batch
(the idea of NVlabs EDM's ``training/loss.py``)::

    repeat
        x0, labels ~ data          (a shard of a shuffled epoch, optionally flipped left-right)
        loss = objective(model, x0, labels, generator)
        gradient step on loss; EMA of the weights

For a diffusion model the objective is :class:`~diffusion_course.losses.DiffusionObjective`,
and the loop is DDPM Algorithm 1 (Ho et al. 2020). The same loop trains the metrics classifier
and the autoencoder of later phases with their own objectives; it never knows whether the
model is conditional, or even a diffusion model.

Around the step: gradient accumulation, gradient clipping, linear learning-rate warm-up,
mixed precision (bf16 autocast, or fp16 with a gradient scaler on CUDA), a preview grid every
N steps, a JSONL metrics log, and atomic checkpoints from which :meth:`Trainer.resume`
continues *bit for bit* on the CPU -- the same weights as if the run had never stopped:

- the data order of epoch ``e`` is a pure function of ``(seed, e)`` (see
  :mod:`~diffusion_course.batching`), so the position in the stream is one number;
- noise, timesteps and flips come from one ``torch.Generator`` per process on the training
  device, whose state is saved, as are torch's global generators (dropout; see
  :func:`~diffusion_course.runtime.capture_rng_state`);
- model, EMA, optimizer, gradient scaler and the objective's own state are saved; the
  learning rate is a pure function of the step.

On a GPU, cuDNN and atomics make some kernels nondeterministic, so a resumed CUDA run is the
same run statistically but not bit for bit (set ``torch.use_deterministic_algorithms(True)``
and ``torch.backends.cudnn.deterministic = True`` yourself if you need that, at a cost in speed).
A checkpoint resumed on another device type (a CUDA run continued on the CPU, or ``--device auto``
picking another device) goes on with fresh noise and a warning that it is no longer bit for bit.

Under ``torchrun`` the same loop runs in K processes with DistributedDataParallel; each rank
reads its own shard of every epoch, and only rank 0 writes files (see
:mod:`~diffusion_course.distributed`).
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from .batching import BatchStream
from .checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint, to_plain
from .distributed import DistInfo, all_gather_objects, parameters_in_sync
from .ema import EMA, unwrap_model
from .runtime import capture_rng_state, restore_rng_state
from .training import TrainConfig, build_objective, check_precision, resolve_hflip

METRICS_NAME = "metrics.jsonl"
SAMPLES_DIR = "samples"


class NonFiniteLossError(RuntimeError):
    """The loss or the gradient norm became NaN or infinite; training stopped before the
    optimizer step, so the weights (and the last checkpoint) are still good."""


@dataclass
class TrainResult:
    """How a run ended. ``reason`` is ``finished``, ``time_limit`` or ``interrupted``;
    ``images_per_second`` is this run's mean training throughput (all processes, time spent
    on previews and checkpoints excluded); ``history`` holds the metrics-log records."""

    step: int
    reason: str
    checkpoint: Path | None
    last_loss: float | None
    images_per_second: float | None
    replicas_in_sync: bool | None = None
    history: list[dict] = field(default_factory=list)


class _ChannelsLast(nn.Module):
    """Feeds the wrapped model NHWC ("channels last") images, the faster layout on GPUs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.inner = model

    def forward(self, x: torch.Tensor, *args, **kwargs):
        return self.inner(x.contiguous(memory_format=torch.channels_last), *args, **kwargs)


class Trainer:
    """Trains ``model`` on ``source`` by minimising ``objective``, as ``config`` says.

    Args:
        config: the run's :class:`~diffusion_course.training.TrainConfig` (validated here). The
            loop reads its optimisation, precision, length and bookkeeping settings.
        model: the network, on any device.
        source: ``(images [N,C,H,W] in [-1,1], labels [N])`` tensors, or a map-style Dataset
            of ``(image, label)`` pairs (see :class:`~diffusion_course.batching.BatchStream`).
        objective: ``objective(model, x0, labels, generator) -> ObjectiveOutput`` (see
            :mod:`~diffusion_course.losses`). Default: the diffusion objective ``config``
            describes (:func:`~diffusion_course.training.build_objective`).
        device: the training device.
        data_stats: plain-data description of the data, stored in checkpoints.
        info: this process's place in a torchrun job (default: single process).
        callbacks: functions ``callback(trainer, record)`` called on rank 0 after each
            optimizer step with ``record = {"step", "loss", "lr", ...}``.

    Use :meth:`train` to run, :meth:`save` / :meth:`resume` for checkpoints.
    """

    def __init__(
        self,
        config: TrainConfig,
        model: nn.Module,
        source,
        *,
        objective=None,
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
        self.objective = objective if objective is not None else build_objective(config)
        self.flip = resolve_hflip(config)
        self.autocast_dtype = check_precision(config.precision, self.device)
        self.data_stats = data_stats or {}

        self.model = model.to(self.device)
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema = EMA(self.model, decay=config.ema_decay)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda", enabled=config.precision == "fp16")

        # what forward() runs: DDP, channels-last input and torch.compile wrap the same parameters
        self.train_model: nn.Module = self.model
        self.ddp: nn.parallel.DistributedDataParallel | None = None
        if self.info.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = self.train_model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if config.channels_last:
            self.train_model = _ChannelsLast(self.train_model)
        if config.compile:
            self.train_model = torch.compile(self.train_model)

        self.stream = BatchStream(
            source, config.batch_size, seed=config.seed, info=self.info,
            num_workers=config.num_workers, pin_memory=self.device.type == "cuda",
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
        return self.config.lr if warm == 0 else self.config.lr * min(1.0, (step + 1) / warm)

    @property
    def images_per_step(self) -> int:
        """Images per optimizer step over all processes."""
        return self.config.batch_size * self.config.grad_accum * self.info.world_size

    # -- one optimizer step -------------------------------------------------

    def train_step(self, micro_batches: list[tuple[int, torch.Tensor, torch.Tensor]]) -> dict:
        """One optimizer step over ``grad_accum`` micro-batches ``(micro_step, images, labels)``.

        Returns a record ``{"step", "loss", "lr", "grad_norm", ...}`` (``step`` counted after
        the update). Raises :class:`NonFiniteLossError` *before* touching the weights if the
        loss or the gradient norm is not finite, with the gradients cleared again.
        """
        self.train_model.train()
        lr = self.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        n = len(micro_batches)
        loss_sum, logs, feedback = torch.zeros((), device=self.device), {}, {}
        for i, (_, images, labels) in enumerate(micro_batches):
            x0 = self._augment(images.to(self.device, non_blocking=True).float())
            with self._sync_gradients(i == n - 1), self._autocast():
                out = self.objective(self.train_model, x0, labels.to(self.device), self.noise_generator)
            self.scaler.scale(out.loss / n).backward()
            loss_sum += out.loss.detach() / n
            for key, value in out.logs.items():
                logs[key] = logs.get(key, 0.0) + value.float().mean() / n
            for key, value in out.feedback.items():
                feedback.setdefault(key, []).append(value)

        self.scaler.unscale_(self.optimizer)
        max_norm = self.config.grad_clip if self.config.grad_clip is not None else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        loss, norm, logs = self._reduce_and_agree_to_stop(loss_sum, grad_norm, logs)
        if not math.isfinite(loss) or (not math.isfinite(norm) and self.config.precision != "fp16"):
            self.optimizer.zero_grad(set_to_none=True)  # so training can go on, e.g. with a lower lr
            raise NonFiniteLossError(self._non_finite_message(micro_batches, loss, norm))

        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.model)
        self.objective.update({k: self._gather(torch.cat(v)) for k, v in feedback.items()})
        self.step += 1
        self.micro_step = micro_batches[-1][0] + 1
        return {"step": self.step, "loss": loss, "lr": lr, "grad_norm": norm, **logs}

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        if not self.flip:
            return x
        flip = torch.rand(x.shape[0], generator=self.noise_generator, device=self.device) < 0.5
        return torch.where(flip[:, None, None, None], x.flip(-1), x)

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _sync_gradients(self, last: bool):
        """DDP: only the last micro-batch of an accumulation all-reduces the gradients."""
        if self.ddp is None or last:
            return contextlib.nullcontext()
        return self.ddp.no_sync()

    def _reduce_and_agree_to_stop(self, loss: torch.Tensor, grad_norm: torch.Tensor, logs: dict):
        """One collective per step: mean loss and logs over ranks, and whether any rank wants
        to stop (so that all ranks stop after the same step and can save together)."""
        if self._deadline is not None and time.perf_counter() >= self._deadline:
            self._stop_request = self._stop_request or "time_limit"
        flags = [float(self._stop_request == "time_limit"), float(self._stop_request == "interrupted")]
        names = sorted(logs)
        values = [loss, grad_norm.float().to(self.device), *(logs[k] for k in names)]
        packed = torch.cat([torch.stack(values), torch.tensor(flags, device=self.device)])
        if self.info.enabled:
            dist.all_reduce(packed)
            packed[: len(values)] /= self.info.world_size  # the grad norm is the same on every rank
        numbers = packed.tolist()
        if numbers[-1] > 0:
            self._stop_request = "interrupted"
        elif numbers[-2] > 0:
            self._stop_request = "time_limit"
        return numbers[0], numbers[1], dict(zip(names, numbers[2 : len(values)], strict=True))

    def _gather(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` from every rank, concatenated (the objective's state must stay identical)."""
        if not self.info.enabled:
            return x
        out = [torch.empty_like(x) for _ in range(self.info.world_size)]
        dist.all_gather(out, x.contiguous())
        return torch.cat(out)

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
        rng = all_gather_objects(capture_rng_state(self.noise_generator), self.info)
        records = to_plain(self.objective.records())
        state = {
            "format": "diffusion-course/checkpoint",
            "version": 2,
            "step": self.step,
            "micro_step": self.micro_step,
            "epoch": self.stream.locate(self.micro_step)[0],
            "batches_per_epoch": self.stream.batches_per_epoch,
            "world_size": self.info.world_size,
            "elapsed_seconds": self.elapsed_before + self._elapsed_this_run(),
            "model": unwrap_model(self.model).state_dict(),
            "model_config": _model_config(self.model),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "objective": self.objective.state_dict(),
            "rng": [_to_cpu(r) for r in rng],
            "config": to_plain(self.config),
            "data_stats": to_plain(self.data_stats),
        }
        clash = sorted(set(records) & set(state))
        if clash:
            raise ValueError(f"the objective's records would overwrite checkpoint entries: {', '.join(clash)}")
        return {**state, **records}

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
        # version 1 checkpoints kept the timestep sampler's state under its own key
        objective_state = state.get("objective", {"timestep_sampler": state.get("timestep_sampler")})
        self.objective.load_state_dict(objective_state)
        self.step = int(state["step"])
        self._last_checkpoint_step = self.step
        self.elapsed_before = float(state.get("elapsed_seconds", 0.0))
        same_layout = (
            int(state["world_size"]) == self.info.world_size
            and int(state["batches_per_epoch"]) == self.stream.batches_per_epoch
        )
        if same_layout:
            self.micro_step = int(state["micro_step"])
            exact = restore_rng_state(state["rng"][self.info.rank], self.noise_generator)
            if not exact:
                self._say(
                    f"warning: the checkpoint's random state comes from another device type; continuing "
                    f"on {self.device.type} with fresh noise (the run goes on, but not bit for bit)"
                )
                self.noise_generator.manual_seed(self.config.seed + 1_000_003 * self.info.rank + self.step)
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

    # -- previews and logs --------------------------------------------------

    @torch.no_grad()
    def preview(self, count: int | None = None, seed: int | None = None) -> torch.Tensor | None:
        """What the EMA model has learned, as images ``[count, C, H, W]`` in [-1, 1] (for a
        diffusion model: samples), with a fixed seed (the config's by default) so previews from
        different steps are comparable. None if the objective has nothing to show."""
        show = getattr(self.objective, "preview", None)
        if show is None:
            return None
        cfg = self.config
        gen = torch.Generator(device=self.device).manual_seed(cfg.seed if seed is None else seed)
        shape = (count or cfg.sample_count, *self._image_shape())
        with self._autocast():
            return show(self.ema.module, shape, gen, steps=cfg.sample_steps)

    def save_preview(self) -> Path | None:
        images = self.preview()
        if images is None:
            return None
        from .viz import save_image_grid

        path = self.out / SAMPLES_DIR / f"step_{self.step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image_grid(images, path, nrow=getattr(self.objective, "preview_nrow", None))
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
        window_time = train_time = 0.0
        steps_done = 0
        reason, last_loss, progress = "finished", None, None
        if self.info.is_main and cfg.progress:
            from tqdm.auto import tqdm

            progress = tqdm(total=total, initial=self.step, desc="training", unit="step", dynamic_ncols=True)
        stream = self.stream.iterate(self.micro_step)
        with self._stop_signals():
            try:
                while total is None or self.step < total:
                    tick = time.perf_counter()
                    record = self.train_step([next(stream) for _ in range(cfg.grad_accum)])
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
                        summary = self._summarise(window, rate)
                        history.append(summary)
                        if self.info.is_main:
                            self._log(summary)
                        window, window_time = [], 0.0
                    if self._stop_request:
                        reason = self._stop_request
                        break
                    if cfg.sample_every and self.step % cfg.sample_every == 0 and self.info.is_main:
                        self.save_preview()
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
                self.save_preview()
        in_sync = None
        if self.info.enabled:
            in_sync = parameters_in_sync(self.model, self.info)
            if not in_sync:
                raise RuntimeError("DDP replicas diverged: parameters differ between ranks")
            self._say(f"DDP check: parameters identical on all {self.info.world_size} ranks")
        rate = steps_done * self.images_per_step / train_time if steps_done else None
        return TrainResult(self.step, reason, self.last_checkpoint, last_loss, rate, in_sync, history)

    def _summarise(self, window: list[dict], rate: float) -> dict:
        keys = [k for k in window[-1] if k not in ("step", "lr")]
        summary = {"step": self.step, "epoch": self.stream.locate(self.micro_step)[0]}
        for key in keys:
            summary[key] = sum(r[key] for r in window) / len(window)
        summary["lr"] = window[-1]["lr"]
        summary["images_per_s"] = rate
        summary["elapsed_s"] = self.elapsed_before + self._elapsed_this_run()
        return summary

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


def _model_config(model: nn.Module) -> dict | None:
    """The model's config as plain data (for checkpoints), or None if it has none."""
    cfg = getattr(unwrap_model(model), "config", None)
    return None if cfg is None else to_plain(cfg)


def _to_cpu(value):
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_cpu(v) for v in value]
    return value


__all__ = ["METRICS_NAME", "SAMPLES_DIR", "NonFiniteLossError", "TrainResult", "Trainer"]
