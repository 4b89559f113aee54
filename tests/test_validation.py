"""The shared checks: one wording for every config, constructor and command line, and no bools for numbers."""

from __future__ import annotations

import math

import pytest

from diffusion_course import validation


def test_check_choice_names_the_setting_and_lists_the_choices():
    validation.check_choice("schedule", "cosine", ("linear", "cosine"))
    validation.check_choice("schedule", "b", iter(["a", "b"]))  # any iterable, consumed once
    with pytest.raises(ValueError) as info:
        validation.check_choice("schedule", "quadratic", ("linear", "cosine"))
    assert str(info.value) == "unknown schedule 'quadratic'; choose one of: linear, cosine"
    with pytest.raises(ValueError, match="^unknown loss type None; choose one of: simple, vlb$"):
        validation.check_choice("loss type", None, iter(["simple", "vlb"]))  # still listed after the search


def test_check_int():
    validation.check_int("batch_size", 1)
    validation.check_int("seed", 0, minimum=0)
    for bad in (0, -3, 2.0, "4", None, True, False):
        with pytest.raises(ValueError) as info:
            validation.check_int("batch_size", bad)
        assert str(info.value) == f"batch_size must be an integer >= 1, got {bad!r}"
    with pytest.raises(ValueError, match=r"^timesteps must be an integer >= 2, got 1$"):
        validation.check_int("timesteps", 1, minimum=2)


def test_check_positive_and_non_negative():
    validation.check_positive("lr", 1e-4)
    validation.check_positive("epochs", 3)
    validation.check_non_negative("weight_decay", 0)
    validation.check_non_negative("weight_decay", 0.1)
    for bad in (0, -1.0, math.nan, math.inf, True, "1", None):
        with pytest.raises(ValueError) as info:
            validation.check_positive("lr", bad, " (try 2e-4)")
        assert str(info.value) == f"lr must be positive, got {bad!r} (try 2e-4)"
    for bad in (-0.1, math.nan, math.inf, False, "0"):
        with pytest.raises(ValueError) as info:
            validation.check_non_negative("weight_decay", bad)
        assert str(info.value) == f"weight_decay must be >= 0, got {bad!r}"


def test_check_ema_decay_and_min_snr_gamma():
    validation.check_ema_decay(0.0)
    validation.check_ema_decay(0.9999)
    for bad in (1.0, 1.5, -0.1, True, "0.9"):
        with pytest.raises(ValueError) as info:
            validation.check_ema_decay(bad)
        assert str(info.value) == f"ema_decay must be in [0, 1), got {bad!r} (0.9999 is typical, 0.999 for short runs)"
    validation.check_min_snr_gamma(5)
    for bad in (0, -5.0, True):
        with pytest.raises(ValueError) as info:
            validation.check_min_snr_gamma(bad)
        assert str(info.value) == f"min-SNR gamma must be positive, got {bad!r} (the paper uses 5)"


@pytest.mark.parametrize("check", [validation.check_int, validation.check_positive, validation.check_non_negative])
def test_a_bool_is_not_a_number_here(check):
    """``True`` is an int to Python; a config that says ``batch_size=True`` is a mistake, not 1."""
    with pytest.raises(ValueError, match="got True"):
        check("setting", True)


def test_messages_are_one_line():
    for call in (lambda: validation.check_choice("x", "y\nz", ("a",)), lambda: validation.check_int("x", "1\n2")):
        with pytest.raises(ValueError) as info:
            call()
        assert "\n" not in str(info.value)
