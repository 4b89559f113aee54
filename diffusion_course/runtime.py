"""Where and how code runs: device choice, reproducible seeds and random states, the course's fast mode.

Fast mode shrinks every long computation in the notebooks (fewer training steps, fewer
images) so that continuous integration can execute each notebook in well under three
minutes on a 2-core CPU. It is on when ``DIFFUSION_COURSE_FAST`` is set to a true value,
or when nbgrader executes a notebook (nbgrader sets ``NBGRADER_EXECUTION`` inside the
kernel during ``validate`` and ``autograde``). A learner running a notebook by hand gets
the full-size version.
"""

from __future__ import annotations

import os
import random
import sys

import numpy as np
import torch

_TRUE = {"1", "true", "yes", "on"}

DEVICES = ("auto", "cpu", "cuda", "mps")
"""Device names :func:`get_device` accepts (``cuda:N`` too); ``auto`` picks the best available."""


def fast_mode() -> bool:
    """Return True when notebooks should run their quick, CI-sized version."""
    if os.environ.get("DIFFUSION_COURSE_FAST", "").strip().lower() in _TRUE:
        return True
    return bool(os.environ.get("NBGRADER_EXECUTION"))


def pick(full, fast):
    """Return ``fast`` in fast mode and ``full`` otherwise (e.g. ``steps = pick(2000, 30)``)."""
    return fast if fast_mode() else full


def note(message: str) -> None:
    """Print a one-line progress note on stderr ("training the classifier once ..."): it shows in a
    notebook and a terminal, and stays out of stdout, which scripts and tests may read."""
    print(message, file=sys.stderr, flush=True)


def get_device(name: str = "auto") -> torch.device:
    """Resolve a device name to a :class:`torch.device`.

    ``"auto"`` picks CUDA, then Apple's MPS, then the CPU. Asking for a device that is not
    available raises a one-line ``ValueError`` that says what is available instead.
    """
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but CUDA is not available; use --device cpu")
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError("device 'mps' was requested but MPS is not available; use --device cpu")
    if name not in {"cpu", "mps"} and not name.startswith("cuda"):
        raise ValueError(f"unknown device {name!r}; choose one of: {', '.join(DEVICES)}")
    return torch.device(name)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch, and return a CPU :class:`torch.Generator` seeded the same.

    Pass the returned generator to functions that draw noise so that results do not depend
    on how many random numbers other code consumed before.
    """
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------
# Random number generator states (what a checkpoint must hold to resume exactly)
# ---------------------------------------------------------------------------


def capture_rng_state(generator: torch.Generator) -> dict:
    """This process's random states as plain data (tensors and strings).

    ``generator`` is the training loop's own generator (noise, timesteps, flips), on the
    training device; torch's global CPU generator (dropout on the CPU) and the current CUDA
    device's (dropout on a GPU) are saved too. Python's and NumPy's generators are not: nothing
    in the training path draws from them.
    """
    state = {
        "device": generator.device.type,
        "noise": generator.get_state(),
        "torch_cpu": torch.get_rng_state(),
    }
    if generator.device.type == "cuda":
        state["torch_cuda"] = torch.cuda.get_rng_state(generator.device)
    return state


def restore_rng_state(state: dict, generator: torch.Generator) -> bool:
    """Inverse of :func:`capture_rng_state`. Returns False, and leaves ``generator`` alone, when
    the state was captured on another device type (a CUDA run resumed on the CPU, say): a CUDA
    generator's state cannot drive a CPU generator, so that continuation cannot be bit-exact.
    The global CPU state is restored either way. States from older checkpoints (no ``device``
    entry; Python and NumPy states, which are ignored) are accepted."""
    torch.set_rng_state(state["torch_cpu"].cpu())
    saved_on = state.get("device", "cuda" if "torch_cuda" in state else "cpu")
    if saved_on != generator.device.type:
        return False
    generator.set_state(state["noise"].cpu())
    if generator.device.type == "cuda" and "torch_cuda" in state:
        torch.cuda.set_rng_state(state["torch_cuda"].cpu(), generator.device)
    return True
