"""Checkpoints that survive crashes and can never run code.

Two promises:

1. **Atomic writes.** A checkpoint is first written to a temporary file in the same
   directory, flushed to disk (``fsync``), and then renamed over the old one with
   ``os.replace``, which POSIX and Windows perform atomically within one file system. A
   crash or Ctrl-C in the middle of a save leaves the previous checkpoint untouched, never
   a half-written file. :func:`atomic_write` does this for any file (the dataset copies in
   :mod:`diffusion_course.data` use it too).

2. **Safe loading.** ``torch.save`` uses Python's pickle, and unpickling arbitrary data can
   execute arbitrary code. Checkpoints are therefore loaded with
   ``torch.load(..., weights_only=True)``, PyTorch's restricted unpickler that only
   rebuilds tensors and plain containers (dict, list, tuple, str, int, float, bool, None).
   Everything this package stores -- configs included -- is kept in those types; a file
   that asks for anything else is refused with :class:`CheckpointError`.

A checkpoint of a diffusion run also records its :class:`~diffusion_course.diffusion.DiffusionConfig`
(schedule, T, prediction target, variance, conditioning), which with the weights is all a sampler
needs: :func:`load_model` rebuilds both without importing any training code (as nanoGPT's
``sample.py`` imports only the model).
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

CHECKPOINT_NAME = "checkpoint.pt"
"""The file name the trainer uses inside its output directory."""


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or contains something other than plain data."""


def to_plain(value: Any) -> Any:
    """Turn dataclasses, tuples, paths and nested containers into dicts/lists/str/numbers.

    Tensors are kept. Anything else raises :class:`CheckpointError`, so a config that would
    not survive ``weights_only`` loading is caught at save time rather than at resume time.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return value
    raise CheckpointError(
        f"cannot store a {type(value).__name__} in a checkpoint; convert it to plain data first"
    )


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None], *, mode: int | None = None) -> Path:
    """Create or replace the file ``path`` so that it is always either the old file or the whole new one.

    ``write(file)`` fills a temporary file opened ``"wb"`` in ``path``'s directory (a rename
    is only atomic within one file system). The data is then flushed to disk (``fsync``),
    the temporary file renamed over ``path`` with ``os.replace``, and the directory synced
    so that the rename survives a power cut. If ``write`` raises -- Ctrl-C included -- the
    temporary file is removed, the file previously at ``path`` (if any) is left as it was,
    and the error propagates.

    The directory must exist. The temporary file is created readable by its owner only;
    ``mode`` (e.g. ``0o644`` for data that is not secret) changes that before the rename.
    Returns ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp_name, mode)
        os.replace(tmp_name, path)
    except BaseException:
        # BaseException: a KeyboardInterrupt mid-write must not leave a stray temp file
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically (temp file in the same dir, fsync, os.replace; see :func:`atomic_write`).

    ``state`` must hold only tensors and plain containers (see :func:`to_plain`). Returns
    the final path. If anything fails, the temporary file is removed and the previous
    checkpoint at ``path`` (if any) is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Load a checkpoint with ``weights_only=True`` (no code can run).

    Raises:
        CheckpointError: the file does not exist, is not a checkpoint, or contains
            objects other than tensors and plain containers (e.g. a malicious pickle).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"refusing to load {path}: it is not a plain-data checkpoint ({_reason(err)})"
        ) from err
    except Exception as err:  # truncated or foreign files fail deep inside torch.load in many ways
        raise CheckpointError(f"cannot read checkpoint {path}: not a complete torch checkpoint "
                              f"({type(err).__name__}: {_first_line(err)})") from err
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a checkpoint dictionary")
    return state


def diffusion_config_of(state: dict):
    """The :class:`~diffusion_course.diffusion.DiffusionConfig` a checkpoint records.

    Checkpoints written before it was recorded (format version 1) hold the run's TrainConfig
    only; the setup is derived from it (schedule, T, prediction, and the variance its loss implies).
    Their linear schedule was not yet scaled by 1000 / T, so for T != 1000 it is ``linear-unscaled``.
    """
    from .diffusion import DiffusionConfig

    if state.get("diffusion_config") is not None:
        return DiffusionConfig.from_dict(dict(state["diffusion_config"]))
    config = state.get("config")
    if not isinstance(config, dict) or "schedule" not in config:
        raise CheckpointError("this checkpoint records no diffusion setup (is it a diffusion model's?)")
    learned = config.get("loss", "simple") in ("hybrid", "vlb")
    schedule = config["schedule"]
    if schedule == "linear" and int(config["timesteps"]) != 1000:
        schedule = "linear-unscaled"
    return DiffusionConfig(
        schedule=schedule,
        timesteps=int(config["timesteps"]),
        prediction=config.get("prediction", "eps"),
        variance="learned" if learned else "fixed_small",
    )


MODEL_KINDS: dict[str, str] = {
    "unet": "diffusion_course.unet:UNet.from_config_dict",
    "text-unet": "diffusion_course.text_model:TextConditionedUNet.from_config_dict",
}
"""How to rebuild each kind of network a checkpoint can hold: ``kind -> "module:callable"``, the
callable taking the plain-data ``model_config`` (without its ``kind`` entry). A checkpoint's
``model_config`` names its kind (``"unet"`` when absent, as in older checkpoints). Modules are
imported only when a checkpoint of their kind is loaded, so loading never imports training code."""


def build_model(model_config: dict):
    """The (untrained) network a checkpoint's ``model_config`` describes (see :data:`MODEL_KINDS`)."""
    import importlib

    cfg = dict(model_config)
    kind = cfg.pop("kind", "unet")
    if kind not in MODEL_KINDS:
        raise CheckpointError(f"unknown model kind {kind!r} in the checkpoint; known: {', '.join(MODEL_KINDS)}")
    module_name, _, attr = MODEL_KINDS[kind].partition(":")
    builder: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        builder = getattr(builder, part)
    return builder(cfg)


def load_model(path: str | os.PathLike, *, ema: bool = True, map_location: Any = "cpu"):
    """Rebuild the network of a checkpoint with its EMA (or raw) weights, in eval mode.

    Returns ``(model, diffusion_config, state)``: the network, the
    :class:`~diffusion_course.diffusion.DiffusionConfig` a sampler needs, and the whole
    checkpoint dictionary (``state["config"]`` is the run's TrainConfig as a dict).
    Raises :class:`CheckpointError` for a file that is not a model checkpoint of this package.
    """
    state = load_checkpoint(path, map_location=map_location)
    if not isinstance(state.get("model_config"), dict) or "model" not in state:
        raise CheckpointError(f"{path} is not a model checkpoint of diffusion-course (no model_config)")
    try:
        model = build_model(state["model_config"])
        weights = state["ema"]["weights"] if ema else state["model"]
        model.load_state_dict(weights)
    except (TypeError, KeyError, RuntimeError, ValueError) as err:
        raise CheckpointError(f"{path}: the weights do not fit the recorded model ({_first_line(err)})") from err
    return model.eval(), diffusion_config_of(state), state


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _reason(err: Exception) -> str:
    """The informative line of PyTorch's long weights_only error (e.g. the blocked global)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for line in lines:
        if "unsupported" in line.lower():
            return line.rstrip(".")
    return type(err).__name__


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


__all__ = [
    "CHECKPOINT_NAME",
    "CheckpointError",
    "MODEL_KINDS",
    "atomic_write",
    "build_model",
    "diffusion_config_of",
    "load_checkpoint",
    "load_model",
    "save_checkpoint",
    "to_plain",
]
