"""The grading round trip and notebook hygiene, for every phase notebook.

1. Regenerating notebooks/ from solutions/ gives exactly the committed files.
2. Autograding a copy of each solution scores full marks; an untouched student copy scores 0
   (both read from the gradebook: nbgrader exits 0 even when tests fail). The solution key
   is graded with the *right variants* of tests/answers/ in its answer cells (answers written
   differently: float64, another draw order), which must still earn full marks; notebooks whose
   answer cells hold the *wrong* answers, or answers that call the package's own function,
   must lose the points of every graded test of those exercises (read per cell).
3. nbgrader's validator in invert mode on the student notebooks: nothing passes yet.
4. Structure: every exercise is an answer cell, then an instant check, then a graded test.
5. Hygiene: no outputs, execution counts or widget state committed; no solutions leak.

Executing the solution notebooks themselves is nbval's job (``make test`` passes
``solutions/`` with ``--nbval-lax``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nbformat
import pytest
from answers import specs

from diffusion_course import grading

REPO_ROOT = Path(__file__).resolve().parents[1]
ASSIGNMENTS = grading.assignments(REPO_ROOT)


def _notebook(folder: Path, name: str) -> Path:
    found = sorted((folder / name).glob("*.ipynb"))
    assert len(found) == 1, f"expected one notebook in {folder / name}, found {found}"
    return found[0]


def _nbgrader(cell) -> dict:
    return cell.metadata.get("nbgrader", {})


@pytest.fixture(scope="session")
def course(tmp_path_factory):
    """A throw-away course folder: solutions copied in, release generated with a gradebook."""
    root = tmp_path_factory.mktemp("course")
    shutil.copy(REPO_ROOT / grading.CONFIG_FILE, root / grading.CONFIG_FILE)
    shutil.copytree(REPO_ROOT / "solutions", root / "solutions",
                    ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
    db = f"sqlite:///{root / 'gradebook.db'}"
    grading.generate(root, db_url=db)
    return root, db


def _with_answers(notebook: Path, answers: dict[str, str]) -> nbformat.NotebookNode:
    """The notebook with the answer cells named in ``answers`` (grade_id -> source) replaced."""
    nb = nbformat.read(notebook, as_version=4)
    for cell in nb.cells:
        grade_id = _nbgrader(cell).get("grade_id")
        if grade_id in answers:
            cell.source = answers[grade_id].strip() + "\n"
    return nb


def _variants(name: str) -> dict[str, dict[str, str]]:
    """Students to autograde besides the untouched copy: ``{student: {answer grade_id: source}}``."""
    exercises = specs().get(name, [])
    students = {"solution-key": {ex.answer: ex.right[0].source for ex in exercises if ex.right}}
    for k in range(max((len(ex.wrong) for ex in exercises), default=0)):
        students[f"wrong-{k + 1}"] = {ex.answer: ex.wrong[k].source for ex in exercises if len(ex.wrong) > k}
    if exercises:
        students["delegating"] = {ex.answer: ex.delegate.source for ex in exercises}
    return students


@pytest.fixture(scope="session")
def autograded(course):
    """Autograde, once per assignment, the solution key, an untouched student copy, and the
    wrong and delegating answers; returns ``{student: (score, max)}`` and per-cell grades."""
    root, db = course
    done: dict[str, dict] = {}

    def run(name: str) -> dict:
        if name not in done:
            solution = _notebook(root / "solutions", name)
            submissions = {"untouched": nbformat.read(_notebook(root / "notebooks", name), as_version=4)}
            for student, answers in _variants(name).items():
                submissions[student] = _with_answers(solution, answers)
            for student, nb in submissions.items():
                dest = root / ".grading" / "submitted" / student / name
                dest.mkdir(parents=True, exist_ok=True)
                nbformat.write(nb, dest / solution.name)
            grading.autograde(root, name, db)
            done[name] = {
                "scores": {s: grading.score(db, name, s) for s in submissions},
                "cells": {s: grading.cell_scores(db, name, solution.stem, s) for s in submissions},
            }
        return done[name]

    return run


def test_there_are_assignments():
    assert ASSIGNMENTS[0] == "01_forward_diffusion"


@pytest.mark.parametrize("name", ASSIGNMENTS)
def test_release_is_exactly_what_nbgrader_generates(course, name):
    root, _ = course
    generated = sorted(p.relative_to(root / "notebooks") for p in (root / "notebooks" / name).rglob("*") if p.is_file())
    # what a learner's JupyterLab leaves beside the notebooks (git-ignored) is not part of the release
    committed = sorted(p.relative_to(REPO_ROOT / "notebooks") for p in (REPO_ROOT / "notebooks" / name).rglob("*")
                       if p.is_file() and not {".ipynb_checkpoints", "runs"} & set(p.parts))
    assert generated == committed, "notebooks/ is out of date: run `make notebooks` and commit the result"
    for rel in generated:
        assert (root / "notebooks" / rel).read_bytes() == (REPO_ROOT / "notebooks" / rel).read_bytes(), (
            f"notebooks/{rel} differs from what nbgrader generates: run `make notebooks` (never edit it by hand)"
        )


@pytest.mark.notebooks
class AutogradedAssignment:
    """The autograding tests of one assignment (``name``). One class per assignment (below), so that
    ``make test``'s two processes (``--dist loadscope``: a class at a time) grade two at once."""

    name: str

    def test_solution_scores_full_marks(self, autograded):
        got, best = autograded(self.name)["scores"]["solution-key"]
        assert best > 0
        assert got == best, f"the solution notebook (with the right variants of tests/answers/) scored {got}/{best}"

    def test_untouched_student_notebook_scores_zero(self, autograded):
        """Also what nbgrader's Validate in invert mode would report, read from this run."""
        got, best = autograded(self.name)["scores"]["untouched"]
        assert best > 0
        assert got == 0, f"an untouched student notebook scored {got}/{best}: some test passes without any work"
        passing = sorted(cell for cell, (points, _) in autograded(self.name)["cells"]["untouched"].items()
                         if points > 0)
        assert not passing, f"graded cells that pass before the learner writes any code: {passing}"

    def test_wrong_and_delegating_answers_lose_the_points_of_their_exercise(self, autograded):
        exercises = specs().get(self.name)
        if not exercises:
            pytest.skip(f"no answers written down for {self.name} in tests/answers/")
        cells = autograded(self.name)["cells"]
        failures = []
        for student, answers in _variants(self.name).items():
            if student == "solution-key":
                continue
            for ex in exercises:
                if ex.answer not in answers:
                    continue
                for test_id in ex.tests:
                    got, best = cells[student][test_id]
                    if got >= best:
                        failures.append(f"{student} answer to {ex.answer} still earns {got}/{best} in {test_id}")
        assert not failures, "\n".join(failures)


for _name in ASSIGNMENTS:
    globals()[f"TestAutograde_{_name}"] = type(f"TestAutograde_{_name}", (AutogradedAssignment,), {"name": _name})


@pytest.mark.parametrize("name", ASSIGNMENTS)
def test_every_exercise_has_answers_written_down(name):
    nb = nbformat.read(_notebook(REPO_ROOT / "solutions", name), as_version=4)
    answer_ids = {_nbgrader(c)["grade_id"] for c in nb.cells if _nbgrader(c).get("solution") and c.cell_type == "code"}
    written = {ex.answer for ex in specs().get(name, [])}
    missing = sorted(answer_ids - written)
    assert not missing, f"write wrong, delegating and right answers in tests/answers/ for: {missing}"
    assert written <= answer_ids, f"tests/answers/ names answer cells that do not exist: {sorted(written - answer_ids)}"


@pytest.mark.parametrize("name", ASSIGNMENTS)
def test_every_exercise_is_answer_then_check_then_graded_test(name):
    nb = nbformat.read(_notebook(REPO_ROOT / "solutions", name), as_version=4)
    cells = nb.cells
    answers = [i for i, c in enumerate(cells) if _nbgrader(c).get("solution") and c.cell_type == "code"]
    assert answers, "a phase notebook needs exercises"
    ids = [_nbgrader(c)["grade_id"] for c in cells if _nbgrader(c)]
    assert len(ids) == len(set(ids)), "grade_id values must be unique"
    for i in answers:
        answer = cells[i]
        assert "### BEGIN SOLUTION" in answer.source and "### END SOLUTION" in answer.source
        # the instant-feedback check may come after a short demo cell, but before the graded test
        following = cells[i + 1 :]
        test_at = next(j for j, c in enumerate(following) if _nbgrader(c).get("grade"))
        between = following[:test_at]
        assert any("check_" in c.source for c in between if c.cell_type == "code"), (
            f"exercise {_nbgrader(answer)['grade_id']}: add a diffusion_course.checks cell before its graded test"
        )
        test = following[test_at]
        assert test.metadata["nbgrader"]["points"] > 0 and test.metadata["nbgrader"]["locked"]
    graded = [c for c in cells if _nbgrader(c).get("grade")]
    assert len(graded) >= len(answers)
    untagged = [_nbgrader(c)["grade_id"] for c in graded if grading.RUN_ALL_TAG not in c.metadata.get("tags", [])]
    assert not untagged, f"graded cells without the {grading.RUN_ALL_TAG!r} tag (Run All stops there): {untagged}"
    assert any("### BEGIN HIDDEN TESTS" in c.source for c in graded), "some graded cells should have hidden tests"


def _all_notebooks():
    return sorted((REPO_ROOT / "solutions").glob("*/*.ipynb")) + sorted((REPO_ROOT / "notebooks").glob("*/*.ipynb"))


@pytest.mark.parametrize("path", _all_notebooks(), ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_notebooks_are_committed_clean(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert "widgets" not in nb.metadata, "saved widget state: run `make strip`"
    assert nb.metadata["kernelspec"]["name"] == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, "committed outputs: run `make strip`"
    assert len(json.dumps(nb)) < 300_000, "notebook too large: no embedded data or images"


@pytest.mark.parametrize("name", ASSIGNMENTS)
def test_release_has_no_solutions_or_hidden_tests(name):
    text = _notebook(REPO_ROOT / "notebooks", name).read_text()
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS"):
        assert marker not in text
    nb = nbformat.read(_notebook(REPO_ROOT / "notebooks", name), as_version=4)
    stubs = [c for c in nb.cells if _nbgrader(c).get("solution") and c.cell_type == "code"]
    assert stubs and all("raise NotImplementedError()" in c.source for c in stubs)


def test_strip_notebook_removes_outputs_and_widget_state():
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("1 + 1")
    cell.outputs = [nbformat.v4.new_output("execute_result", {"text/plain": "2"}, execution_count=1)]
    cell.execution_count = 1
    nb.cells = [cell]
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    assert grading.strip_notebook(nb) is True
    assert cell.outputs == [] and cell.execution_count is None and "widgets" not in nb.metadata
    assert grading.strip_notebook(nb) is False
