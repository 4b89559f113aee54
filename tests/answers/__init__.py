"""Answers a learner might hand in, per assignment: the material of the grading-fairness tests.

Each phase module defines ``EXERCISES``, a list of :class:`Exercise`: for one answer cell of a
solution notebook, plausible *wrong* answers (each must lose points in the graded tests and be
rejected by the instant check, with the check naming the mistake), an answer that *delegates*
to the package's own function (must earn nothing), and *right* variants (written differently,
e.g. in float64 or drawing random numbers in another order: full marks from both).

``tests/test_grading_fairness.py`` runs the checks on them directly (fast), and
``tests/test_notebooks.py`` autogrades notebooks whose answer cells were replaced by them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import conditioning, forward_diffusion, sampling, training, unet


@dataclass(frozen=True)
class Answer:
    why: str  # what kind of answer this is, in words (shown when a test fails)
    source: str  # the whole answer cell, as a learner would write it
    says: str = ""  # for a wrong answer: a phrase the instant check must print


@dataclass(frozen=True)
class Exercise:
    answer: str  # grade_id of the answer cell
    function: str  # the name the cell defines, handed to the check
    check: str  # the diffusion_course.checks function, called as check(function)
    tests: tuple[str, ...]  # grade_ids of the graded test cells of this exercise
    wrong: tuple[Answer, ...]
    delegate: Answer
    right: tuple[Answer, ...] = ()
    prelude: str = ""  # code the answer relies on (imports, earlier definitions) for the fast test
    check_kwargs: dict = field(default_factory=dict)


def specs() -> dict[str, list[Exercise]]:
    """``{assignment: exercises}`` for every assignment that has answers written down."""
    return {
        "01_forward_diffusion": forward_diffusion.exercises(Exercise, Answer),
        "02_unet": unet.exercises(Exercise, Answer),
        "03_training": training.exercises(Exercise, Answer),
        "04_sampling": sampling.exercises(Exercise, Answer),
        "05_conditioning": conditioning.exercises(Exercise, Answer),
    }
