"""Course maintenance for instructors: generate student notebooks, strip, autograde, score.

The course follows nbgrader's layout (see ``nbgrader_config.py`` at the repository root):
``solutions/<NN_phase>/<NN_phase>.ipynb`` is the source with solutions, and
``notebooks/<NN_phase>/<NN_phase>.ipynb`` is the student release, generated from it.

Command line (also behind ``make notebooks`` and ``make strip``)::

    python -m diffusion_course.grading generate   # solutions/ -> notebooks/ (deterministic)
    python -m diffusion_course.grading strip      # remove outputs and widget state from solutions/
    python -m diffusion_course.grading grade NAME.ipynb --assignment 01_forward_diffusion
                                                 # autograde one learner's notebook, print the score

nbgrader's own commands exit 0 even when tests fail or a cell times out, so every score
here is read back from the gradebook, never from an exit code.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_FILE = "nbgrader_config.py"


def assignments(root: Path = REPO_ROOT) -> list[str]:
    """The assignment names, one per folder of ``solutions/`` holding a notebook, sorted."""
    source = Path(root) / "solutions"
    return sorted(p.name for p in source.iterdir() if p.is_dir() and any(p.glob("*.ipynb")))


def _nbgrader(args: list[str], root: Path, timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run an nbgrader command in ``root``. The venv's bin/ goes on PATH: nbgrader shells out to alembic."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    cmd = [sys.executable, "-m", "nbgrader", *args, f"--CourseDirectory.root={root}"]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"`nbgrader {' '.join(args)}` failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def generate(root: Path = REPO_ROOT, db_url: str | None = None, names: list[str] | None = None) -> None:
    """Regenerate ``notebooks/`` from ``solutions/`` with ``nbgrader generate_assignment``.

    Without ``db_url`` the gradebook is left alone (``--no-db``): the release is the same
    either way, byte for byte, which is what lets a test compare it with the committed one.
    """
    for name in names or assignments(root):
        args = ["generate_assignment", name, "--force"]
        args += [f"--db={db_url}"] if db_url else ["--no-db"]
        _nbgrader(args, root)


def autograde(root: Path, assignment: str, db_url: str, timeout: float | None = None) -> None:
    """Autograde every submission of ``assignment`` under ``root``'s submitted folder."""
    _nbgrader(["autograde", assignment, "--force", f"--db={db_url}"], root, timeout=timeout)


def score(db_url: str, assignment: str, student: str) -> tuple[float, float]:
    """``(score, max_score)`` of one student's submission, read from the gradebook."""
    from nbgrader.api import Gradebook

    with Gradebook(db_url) as gb:
        sub = gb.find_submission(assignment, student)
        return float(sub.score), float(sub.max_score)


def cell_scores(db_url: str, assignment: str, notebook: str, student: str) -> dict[str, tuple[float, float]]:
    """``{grade_id: (score, max_score)}`` of every graded cell of one student's notebook."""
    from nbgrader.api import Gradebook

    with Gradebook(db_url) as gb:
        sub = gb.find_submission_notebook(notebook, assignment, student)
        return {g.name: (float(g.score), float(g.max_score)) for g in sub.grades}


RUN_ALL_TAG = "raises-exception"
"""JupyterLab's "Run All" stops at the first cell that raises, unless the cell carries this tag. A
graded test raises until its exercise is solved, so every graded cell carries it: a learner who runs
the whole notebook sees every test's verdict, and the notebook goes on with the package's version."""


def strip_notebook(nb: nbformat.NotebookNode) -> bool:
    """Remove outputs, execution counts and saved widget state in place, and tag every graded test
    cell with :data:`RUN_ALL_TAG`. True if anything changed."""
    changed = False
    for key in ("widgets", "execution"):
        if key in nb.metadata:
            del nb.metadata[key]
            changed = True
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        if cell.get("outputs"):
            cell.outputs = []
            changed = True
        if cell.get("execution_count") is not None:
            cell.execution_count = None
            changed = True
        for key in ("execution", "collapsed", "scrolled"):
            if key in cell.metadata:
                del cell.metadata[key]
                changed = True
        grading = cell.metadata.get("nbgrader", {})
        if grading.get("grade") and not grading.get("solution"):
            tags = cell.metadata.setdefault("tags", [])
            if RUN_ALL_TAG not in tags:
                tags.append(RUN_ALL_TAG)
                changed = True
    return changed


def strip(root: Path = REPO_ROOT) -> list[Path]:
    """Strip every notebook under ``solutions/``; returns the files that changed."""
    changed = []
    for path in sorted((Path(root) / "solutions").glob("*/*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        if strip_notebook(nb):
            nbformat.write(nb, path)
            changed.append(path)
    return changed


def grade_notebook(notebook: Path, assignment: str, root: Path = REPO_ROOT) -> tuple[float, float]:
    """Autograde one learner notebook in a throw-away course folder; returns ``(score, max)``."""
    notebook = Path(notebook).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        course = Path(tmp)
        shutil.copy(Path(root) / CONFIG_FILE, course / CONFIG_FILE)
        shutil.copytree(Path(root) / "solutions" / assignment, course / "solutions" / assignment)
        db = f"sqlite:///{course / 'gradebook.db'}"
        generate(course, db_url=db, names=[assignment])
        dest = course / ".grading" / "submitted" / "learner" / assignment
        dest.mkdir(parents=True)
        target = next((course / "solutions" / assignment).glob("*.ipynb")).name
        shutil.copy(notebook, dest / target)
        autograde(course, assignment, db)
        return score(db, assignment, "learner")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffusion_course.grading", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("generate", help="regenerate notebooks/ from solutions/")
    sub.add_parser("strip", help="remove outputs and widget state from solutions/")
    grade = sub.add_parser("grade", help="autograde one learner notebook and print its score")
    grade.add_argument("notebook", type=Path)
    grade.add_argument("--assignment", required=True)
    args = parser.parse_args(argv)

    if args.command == "generate":
        generate()
        print(f"regenerated notebooks/ for: {', '.join(assignments())}")
    elif args.command == "strip":
        changed = strip()
        print("\n".join(f"stripped {p.relative_to(REPO_ROOT)}" for p in changed) or "nothing to strip")
    elif args.command == "grade":
        if not args.notebook.is_file():
            print(f"error: no notebook at {args.notebook}", file=sys.stderr)
            return 2
        if args.assignment not in assignments():
            print(f"error: unknown assignment {args.assignment!r}; choose one of: {', '.join(assignments())}",
                  file=sys.stderr)
            return 2
        got, best = grade_notebook(args.notebook, args.assignment)
        print(f"{args.notebook.name}: {got:g} / {best:g} points")
    return 0


if __name__ == "__main__":
    sys.exit(main())
