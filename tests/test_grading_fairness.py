"""Grading is fair and cannot be fooled: the instant checks, run on the answers in tests/answers/.

For every exercise that has answers written down: each plausible wrong answer is rejected by its
check, which names the mistake; an answer that calls the package's own function is rejected and
told so; answers that are right but written differently (float64, another order of random draws)
pass. The graded test cells get the same answers in tests/test_notebooks.py, through nbgrader.
"""

from __future__ import annotations

import pytest
from answers import Answer, Exercise, specs

from diffusion_course import checks

CASES = [(name, ex) for name, exercises in specs().items() for ex in exercises]


def _ids(case) -> str:
    return f"{case[0][:2]}-{case[1].answer}"


def _run_check(ex: Exercise, answer: Answer, capsys) -> tuple[bool, str]:
    namespace: dict = {}
    exec(ex.prelude + answer.source, namespace)  # noqa: S102 - the answers are our own test material
    result = getattr(checks, ex.check)(namespace[ex.function], **ex.check_kwargs)
    return bool(result), capsys.readouterr().out


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_every_wrong_answer_is_rejected_and_named(case, capsys):
    _, ex = case
    assert ex.wrong, f"{ex.answer}: write down at least one plausible wrong answer"
    for answer in ex.wrong:
        passed, printed = _run_check(ex, answer, capsys)
        assert not passed, f"{ex.answer}: the check accepts a wrong answer ({answer.why})"
        assert answer.says in printed, f"{ex.answer} ({answer.why}): the check should say {answer.says!r}:\n{printed}"


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_calling_the_package_is_rejected(case, capsys):
    _, ex = case
    passed, printed = _run_check(ex, ex.delegate, capsys)
    assert not passed and "the package's own" in printed, printed


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_right_answers_written_differently_pass(case, capsys):
    _, ex = case
    for answer in ex.right:
        passed, printed = _run_check(ex, answer, capsys)
        assert passed, f"{ex.answer}: the check rejects a right answer ({answer.why}):\n{printed}"


def test_own_work_is_detected_through_aliases_and_wrappers():
    import functools

    from diffusion_course import diffusion

    alias = diffusion.q_sample

    @functools.wraps(alias)
    def wrapper(*args):
        return alias(*args)

    def honest(x):
        return x * 2

    assert checks.assert_own_work(honest, [diffusion.q_sample], 3) is None  # a graded cell may end with it
    with pytest.raises(AssertionError, match="package's own `q_sample`"):
        checks.assert_own_work(lambda: wrapper(None, None, None, None), [diffusion.q_sample])


def test_assert_close_accepts_any_float_dtype_and_names_the_problem():
    import torch

    expected = torch.linspace(0, 1, 5)
    checks.assert_close(expected.double(), expected)
    for actual, message in [
        (expected[:4], "shape"),
        (expected + 1e-3, "differs"),
        (expected.long(), "floating-point"),
        ([0.0] * 5, "torch.Tensor"),
    ]:
        with pytest.raises(AssertionError, match=message):
            checks.assert_close(actual, expected)
