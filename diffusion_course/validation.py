"""Checks shared by every config, class and command line: one wording, one place.

Each function raises a one-line :class:`ValueError` that names the setting, what was given and
what would work, so a config, a constructor and the CLI built on them all say the same thing
(the CLIs turn the ValueError into ``error: ...`` and exit code 2).
"""

from __future__ import annotations

import math
from collections.abc import Iterable


def check_choice(name: str, value: object, choices: Iterable[str]) -> None:
    """``value`` must be one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of: {', '.join(choices)}")


def check_int(name: str, value: object, minimum: int = 1) -> None:
    """``value`` must be an int (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_positive(name: str, value: object, hint: str = "") -> None:
    """``value`` must be a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}{hint}")


def check_non_negative(name: str, value: object) -> None:
    """``value`` must be a finite number >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")


def check_ema_decay(decay: object) -> None:
    """An EMA decay lies in [0, 1): 1 would never move, above 1 would diverge."""
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1), got {decay!r} (0.9999 is typical, 0.999 for short runs)")


def check_min_snr_gamma(gamma: object) -> None:
    """min-SNR's clamp gamma is positive (Hang et al. 2023 use 5)."""
    check_positive("min-SNR gamma", gamma, " (the paper uses 5)")


__all__ = [
    "check_choice",
    "check_ema_decay",
    "check_int",
    "check_min_snr_gamma",
    "check_non_negative",
    "check_positive",
]
