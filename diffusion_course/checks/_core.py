"""The machinery shared by every check: a result that prints its verdict, safe calls.

Each ``check_*`` function runs a learner's function on small inputs, compares it with
the package's reference implementation, and *says in words* what is wrong: a wrong
shape, noise at the wrong scale, t indexed off by one, a missing clip. It prints its
verdict and never raises, so "Run all" keeps going; the graded test cell that follows
is the one that counts.

The return value is a :class:`CheckResult`, true when every check passed, which the
course's own tests use. In a notebook it displays nothing beyond the printed lines.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

OK = "✅"
BAD = "❌"


@dataclass
class CheckResult:
    """Outcome of a check: ``passed`` plus the problems found, in words."""

    name: str
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    def __bool__(self) -> bool:
        return self.passed

    def _ipython_display_(self) -> None:
        # the verdict was already printed; showing the object again would only repeat it
        pass

    def report(self) -> CheckResult:
        if self.passed:
            print(f"{OK} {self.name}: all checks passed.")
        else:
            print(f"{BAD} {self.name}: {len(self.problems)} problem(s) found")
            for p in self.problems:
                print(f"   - {p}")
        return self


# ---------------------------------------------------------------------------
# Own work: an answer that calls the package's own function earns nothing
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def watching(functions: Iterable[Callable]):
    """Record which of ``functions`` run while the block runs; yields the list of their names.

    Calls are recognised by their code object (through ``sys.setprofile``), so an alias
    (``from diffusion_course.diffusion import q_sample as qs``), a wrapper or a method
    reference is caught just the same.
    """
    codes = {inspect.unwrap(f).__code__: f.__qualname__ for f in functions}  # e.g. `ResBlock.forward`
    seen: list[str] = []

    def profiler(frame, event, arg):
        if event == "call" and frame.f_code in codes:
            seen.append(codes[frame.f_code])

    previous = sys.getprofile()
    sys.setprofile(profiler)
    try:
        yield seen
    finally:
        sys.setprofile(previous)


def delegation_message(names: Iterable[str]) -> str:
    found = ", ".join(f"`{n}`" for n in dict.fromkeys(names))
    return (f"your answer calls the package's own {found}: write it yourself (the package's version "
            "comes right after the exercise).")


def assert_own_work(fn: Callable, forbidden: Iterable[Callable], *args, **kwargs) -> None:
    """For graded tests: run ``fn(*args, **kwargs)`` and fail if it calls any of ``forbidden``.

    Returns None on purpose: nbgrader reads a number left as a graded cell's last value as
    partial credit, so this call may end a test cell safely.
    """
    with watching(forbidden) as seen:
        try:
            fn(*args, **kwargs)
        except Exception:
            if not seen:
                raise
    if seen:
        raise AssertionError(delegation_message(seen))


def assert_close(actual, expected: torch.Tensor, name: str = "the result", tol: float = 1e-5) -> None:
    """For graded tests: the comparison the instant checks make, with the same verdicts.

    Any floating dtype is accepted (float32 or float64: the values are compared in float64);
    the shape must match exactly. Raises AssertionError naming what differs.
    """
    if not isinstance(actual, torch.Tensor):
        raise AssertionError(f"{name} should be a torch.Tensor, got {type(actual).__name__}")
    if not actual.is_floating_point():
        raise AssertionError(f"{name} should hold floating-point numbers, got {actual.dtype}")
    if actual.shape != expected.shape:
        raise AssertionError(f"{name} should have shape {tuple(expected.shape)}, got {tuple(actual.shape)}")
    if not _close(actual, expected, tol):
        worst = (actual.double() - expected.double()).abs().max().item()
        raise AssertionError(f"{name} differs from the expected values (largest difference {worst:.3g})")


def _call(result: CheckResult, fn: Callable, *args, forbidden: Iterable[Callable] = (), **kwargs):
    """Run the learner's function; turn an exception, or a call of the package's own
    version (``forbidden``), into a readable problem."""
    seen: list[str] = []
    try:
        with watching(forbidden) as seen:
            out = fn(*args, **kwargs)
        if seen:
            result.problems.append(delegation_message(seen))
            return None
        return out
    except NotImplementedError:
        result.problems.append("not implemented yet: replace `raise NotImplementedError()` with your code.")
    except Exception as err:  # a learner's bug of any kind is reported, not raised
        if seen:
            result.problems.append(delegation_message(seen))
            return None
        frame = traceback.extract_tb(err.__traceback__)[-1]
        result.problems.append(
            f"your function raised {type(err).__name__}: {err} (line {frame.lineno}: {frame.line!r})"
        )
    return None


def _is_tensor(result: CheckResult, out, what: str) -> bool:
    if not isinstance(out, torch.Tensor):
        result.problems.append(f"{what} should be a torch.Tensor, got {type(out).__name__}.")
        return False
    return True


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> bool:
    """Same shape and values within ``tol``, whatever the floating dtypes (compared in float64)."""
    return a.shape == b.shape and torch.allclose(a.double(), b.double(), atol=tol, rtol=tol)
