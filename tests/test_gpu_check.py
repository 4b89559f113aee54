"""benchmarks/gpu_check.py, the one-command GPU readiness check, without a GPU.

The GPU machine gets one run of it, so everything that can be checked on a CPU is: the
no-GPU exit, the notebook cell it extracts, the time limits, the results file and table.
(`--force-cpu` rehearses every part on the CPU end to end; that takes minutes and is run
by hand, see the script's docstring.)
"""

from __future__ import annotations

import ast
import builtins
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from benchmark_scripts import load_script

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "benchmarks" / "gpu_check.py"


def _script():
    return load_script("gpu_check", "gpu_check")


gpu_check = _script()


def _run(*args: str, cwd: Path, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def test_without_cuda_it_says_so_and_exits_0(tmp_path):
    # CUDA_VISIBLE_DEVICES="" hides any GPU, so this holds on a GPU machine too
    proc = _run("--out", str(tmp_path / "out"), cwd=tmp_path, env={"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == gpu_check.NO_CUDA_LINE
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    assert report["mode"] == "no-cuda" and report["exit_code"] == 0 and report["parts"] == []
    assert (tmp_path / "out" / "gpu_check.log").read_text() == proc.stdout


def test_bad_flags_exit_with_code_2():
    for argv in (["--only", "environment,warp-drive"], ["--steps", "0"], ["--budget", "-1"]):
        with pytest.raises(SystemExit) as exc:
            gpu_check.parse_args(argv)
        assert exc.value.code == 2


def test_a_failing_part_is_reported_and_fails_the_run(tmp_path):
    """End to end through a child process: the notebook part fails at once on a missing
    archive; the error reaches the status line, the table, the log and the JSON, and exit code 1."""
    out = tmp_path / "out"
    proc = _run("--force-cpu", "--only", "notebook-03,notebook-05", "--cifar-archive",
                str(tmp_path / "missing.tar.gz"), "--out", str(out), cwd=tmp_path, env={"CUDA_VISIBLE_DEVICES": ""},
                timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL  notebook-03" in proc.stdout and "missing.tar.gz does not exist" in proc.stdout
    assert "FAIL  notebook-05" in proc.stdout
    assert "== summary ==" in proc.stdout and "FAILED: notebook-03, notebook-05" in proc.stdout
    report = json.loads((out / "results.json").read_text())
    assert [(p["name"], p["status"]) for p in report["parts"]] == [("notebook-03", "FAIL"), ("notebook-05", "FAIL")]
    assert "missing.tar.gz does not exist" in report["parts"][0]["error"]
    assert report["exit_code"] == 1 and report["mode"] == "force-cpu"
    assert proc.stdout.strip() in (out / "gpu_check.log").read_text().strip()


def test_a_part_past_its_limit_is_stopped_with_its_children(tmp_path):
    """The hard limit: the part's whole process group goes, grandchildren (compile workers) too."""
    pid_file = tmp_path / "grandchild.pid"
    code = ("import subprocess, sys, time; "
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
            f"open({str(pid_file)!r}, 'w').write(str(p.pid)); print('started', flush=True); time.sleep(120)")
    lines = []
    start = time.perf_counter()
    code, timed_out, tail = gpu_check.run_streaming([sys.executable, "-c", code], 3, lines.append)
    assert timed_out and time.perf_counter() - start < 30
    assert lines == ["started"] and tail == ["started"]
    grandchild = int(pid_file.read_text())
    status = Path(f"/proc/{grandchild}/status")
    deadline = time.time() + 10
    while status.exists() and "zombie" not in status.read_text() and time.time() < deadline:
        time.sleep(0.1)
    assert not status.exists() or "zombie" in status.read_text()


def test_run_streaming_reports_exit_code_and_output():
    lines = []
    code, timed_out, tail = gpu_check.run_streaming(
        [sys.executable, "-c", "import sys; print('a'); print('b', file=sys.stderr); sys.exit(3)"], 30, lines.append)
    assert (code, timed_out) == (3, False)
    assert sorted(lines) == ["a", "b"]


# --- the notebook's GPU section ----------------------------------------------------------------


def _bound_names(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
    return names


def test_the_gpu_cell_needs_only_the_imports_before_it():
    setup, cell = gpu_check.notebook_gpu_section()
    setup_tree, cell_tree = ast.parse(setup), ast.parse(cell)
    assert all(isinstance(node, (ast.Import, ast.ImportFrom)) for node in setup_tree.body)
    assert "%" not in setup and "load_tensors(" not in setup  # no magics, no Fashion-MNIST loading
    used = {n.id for n in ast.walk(cell_tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    missing = used - _bound_names(setup_tree) - _bound_names(cell_tree) - set(dir(builtins))
    assert not missing, f"the GPU cell uses names no import before it defines: {missing}"
    assert "torch.cuda.is_available()" in cell and "fast_mode()" in cell
    # it samples the trained run's EMA model, not a fresh trainer's copy of the raw weights
    assert "gpu_trainer.preview(" in cell and "Trainer(gpu_config" in cell and cell.count("Trainer(") == 1


def test_the_dry_run_rewrites_all_apply_to_the_gpu_cell():
    _, cell = gpu_check.notebook_gpu_section()
    cpu = gpu_check.cpu_rewrite(cell)
    ast.parse(cpu)
    assert '"cuda"' not in cpu and "torch.cuda" not in cpu and '"tiny"' in cpu
    with pytest.raises(ValueError, match="no longer contains"):
        gpu_check.cpu_rewrite(cell.replace('"ddpm-cifar10"', '"other"'))


def test_notebook_05s_gpu_cell_needs_only_the_imports_before_it_and_its_rewrites_apply():
    setup, cell = gpu_check.notebook_gpu_section(gpu_check.NOTEBOOK_05)
    setup_tree, cell_tree = ast.parse(setup), ast.parse(cell)
    used = {n.id for n in ast.walk(cell_tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    missing = used - _bound_names(setup_tree) - _bound_names(cell_tree) - set(dir(builtins))
    assert not missing, f"notebook 05's GPU cell uses names no import before it defines: {missing}"
    # what the part judges: a class-conditional model and guided samples under these names
    assert 'conditioning="class"' in cell and "cifar_pipe =" in cell and "cifar_images =" in cell
    cpu = gpu_check.cpu_rewrite(cell, gpu_check.CPU_REWRITES_05)
    ast.parse(cpu)
    assert '"cuda"' not in cpu and "torch.cuda" not in cpu and '"tiny"' in cpu and '"bf16"' not in cpu
    with pytest.raises(ValueError, match="no longer contains"):
        gpu_check.cpu_rewrite(cell.replace('"ddpm-cifar10"', '"other"'), gpu_check.CPU_REWRITES_05)


def test_a_notebook_without_exactly_one_gpu_cell_is_an_error(tmp_path):
    notebook = {"cells": [{"cell_type": "code", "metadata": {}, "source": ["import torch\n"]}]}
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps(notebook))
    with pytest.raises(ValueError, match="expected one code cell tagged 'gpu', found 0"):
        gpu_check.notebook_gpu_section(path)
    notebook["cells"].append({"cell_type": "code", "metadata": {"tags": ["gpu"]},
                              "source": ["%matplotlib inline\n", "x = torch.ones(1)"]})
    path.write_text(json.dumps(notebook))
    assert gpu_check.notebook_gpu_section(path) == ("import torch\n", "x = torch.ones(1)\n")


# --- summary ---------------------------------------------------------------------------------


def test_summary_and_readme_row_from_a_report():
    report = {"parts": [
        {"name": "environment", "status": "PASS", "seconds": 5, "summary": "NVIDIA H100 80GB HBM3",
         "data": {"device_name": "NVIDIA H100 80GB HBM3", "torch": "2.11.0", "cuda": "13.0"}},
        {"name": "unit-tests", "status": "PASS", "seconds": 30, "summary": "7 passed", "data": {}},
        {"name": "throughput", "status": "PASS", "seconds": 20, "summary": "eager", "data": {
            "eager": {"images_per_second": 2000.0, "mfu": 0.2, "batch": 128},
            "trainer": {"images_per_second": 1800.0, "fraction_of_bare": 0.9}}},
        {"name": "notebook-03", "status": "FAIL", "seconds": 3, "summary": "", "error": "boom\ntraceback", "data": {}},
        {"name": "notebook-05", "status": "PASS", "seconds": 40, "summary": "100 steps", "data": {}},
        {"name": "compiled", "status": "PASS", "seconds": 90, "summary": "compiled", "data": {
            "compiled": {"images_per_second": 3000.0, "mfu": 0.3, "batch": 128, "warmup_seconds": 80.0}}},
    ]}
    table = gpu_check.summary_table(report)
    assert "notebook-03  FAIL" in table and "error: boom" in table and "traceback" not in table
    row = gpu_check.readme_row(report)
    assert row.startswith("| `benchmarks/gpu_check.py` |") and row.endswith(" |")
    assert "**2,000 img/s, MFU 20.0 %** eager" in row
    assert "**3,000 img/s, MFU 30.0 %** with torch.compile (compiling 80 s, 1.50x eager)" in row
    assert "Trainer 1,800 img/s (0.90x the bare model)" in row and "notebook 03 GPU section: FAIL" in row
    assert "notebook 05 GPU section: PASS" in row


def test_makefile_runs_it_without_setting_up_a_venv():
    dry = subprocess.run(["make", "-n", "-C", str(REPO_ROOT), "gpu-check", "GPU_CHECK_ARGS=--out x"],
                         capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    assert "benchmarks/gpu_check.py --out x" in dry.stdout and "PYTHONPATH=." in dry.stdout
    assert "pip install" not in dry.stdout
