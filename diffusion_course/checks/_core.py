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

import traceback
from collections.abc import Callable
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


def _call(result: CheckResult, fn: Callable, *args, **kwargs):
    """Run the learner's function; turn an exception into a readable problem."""
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:
        result.problems.append("not implemented yet: replace `raise NotImplementedError()` with your code.")
    except Exception as err:  # a learner's bug of any kind is reported, not raised
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
    return a.shape == b.shape and torch.allclose(a.double(), b.double(), atol=tol, rtol=tol)
