"""Where and how code runs: device choice, reproducible seeds, and the course's fast mode.

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

import numpy as np
import torch

_TRUE = {"1", "true", "yes", "on"}


def fast_mode() -> bool:
    """Return True when notebooks should run their quick, CI-sized version."""
    if os.environ.get("DIFFUSION_COURSE_FAST", "").strip().lower() in _TRUE:
        return True
    return bool(os.environ.get("NBGRADER_EXECUTION"))


def pick(full, fast):
    """Return ``fast`` in fast mode and ``full`` otherwise (e.g. ``steps = pick(2000, 30)``)."""
    return fast if fast_mode() else full


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
        raise ValueError(f"unknown device {name!r}; choose one of: auto, cpu, cuda, mps")
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
