"""The project's promises about itself: install files agree, the README's commands come first."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def _normalise(req: str) -> str:
    return re.sub(r"\s+", "", req).lower()


def test_environment_yml_lists_the_same_dependencies_as_pyproject():
    project = _pyproject()["project"]
    wanted = {_normalise(r) for r in project["dependencies"]}
    for extra in ("course", "dev"):
        wanted |= {_normalise(r) for r in project["optional-dependencies"][extra]}
    text = (REPO_ROOT / "environment.yml").read_text()
    pip_section = text.split("- pip:", 1)[1]
    listed = {
        _normalise(line.strip()[2:])
        for line in pip_section.splitlines()
        if line.strip().startswith("- ") and not line.strip().startswith("- -e")
    }
    assert listed == wanted, f"only in environment.yml: {listed - wanted}; only in pyproject: {wanted - listed}"
    assert "-e ." in pip_section


def test_torch_is_a_range_not_a_pin():
    deps = _pyproject()["project"]["dependencies"]
    torch_reqs = [d for d in deps if d.startswith(("torch>", "torch=", "torchvision"))]
    assert torch_reqs and all(">=" in d and "==" not in d for d in torch_reqs)


def test_readme_starts_with_the_two_commands():
    text = (REPO_ROOT / "README.md").read_text()
    first_block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert commands == ["make lab", "make test"]
    assert text.index("make lab") < text.index("## Course map")
    assert "dataset-fashion-mnist" in text and "environment.yml" in text


def test_ci_runs_the_readme_test_command():
    script = (REPO_ROOT / ".ci" / "run").read_text()
    assert "dataset-fashion-mnist" in script
    assert script.strip().splitlines()[-1] == "make test"


def test_makefile_targets_exist():
    out = subprocess.run(["make", "-n", "-C", str(REPO_ROOT), "lab", "test", "instructor", "notebooks", "strip"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "--allow-root" in subprocess.run(
        ["make", "-n", "-C", str(REPO_ROOT), "lab"], capture_output=True, text=True
    ).stdout or subprocess.run(["id", "-u"], capture_output=True, text=True).stdout.strip() != "0"


def test_console_scripts_are_declared():
    scripts = _pyproject()["project"]["scripts"]
    assert scripts["diffusion-course-train"] == "diffusion_course.train:main"


def test_package_imports_and_has_version():
    out = subprocess.run([sys.executable, "-c", "import diffusion_course; print(diffusion_course.__version__)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == _pyproject()["project"]["version"]


def test_data_folder_is_ignored_but_documented():
    assert (REPO_ROOT / "data" / "README.md").is_file()
    ignored = subprocess.run(["git", "-C", str(REPO_ROOT), "check-ignore", "-q", "data/FashionMNIST/raw/x"])
    assert ignored.returncode == 0
