"""`make lab` really serves the course: notebooks visible, learner tools on, instructor tools off."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TOKEN = "diffusion-course-test"
INSTRUCTOR_PLUGINS = ("@jupyter/nbgrader:formgrader", "@jupyter/nbgrader:create-assignment")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read()


def _serve(target: str, port: int) -> subprocess.Popen:
    args = f"--no-browser --port={port} --ServerApp.ip=127.0.0.1 --IdentityProvider.token={TOKEN}"
    return subprocess.Popen(
        ["make", "-C", str(REPO_ROOT), target, f"LAB_ARGS={args}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )


def _wait_until_up(proc: subprocess.Popen, port: int, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"make exited with {proc.returncode}:\n{proc.stdout.read()}")
        try:
            _get(f"http://127.0.0.1:{port}/api/status?token={TOKEN}")
            return
        except OSError:
            time.sleep(0.5)
    pytest.fail("JupyterLab did not come up in time")


def _stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def _disabled_plugins(port: int) -> dict:
    page = _get(f"http://127.0.0.1:{port}/lab?token={TOKEN}").decode()
    config = json.loads(re.search(r'<script id="jupyter-config-data" type="application/json">(.*?)</script>',
                                  page, re.S).group(1))
    return config.get("disabledExtensions", [])


@pytest.mark.slow
def test_make_lab_serves_the_student_notebooks_as_a_learner():
    port = _free_port()
    proc = _serve("lab", port)
    try:
        _wait_until_up(proc, port)
        listing = json.loads(_get(f"http://127.0.0.1:{port}/api/contents?token={TOKEN}"))
        names = {item["name"] for item in listing["content"]}
        assert "01_forward_diffusion" in names and "solutions" not in names
        nb = json.loads(_get(f"http://127.0.0.1:{port}/api/contents/01_forward_diffusion/"
                             f"01_forward_diffusion.ipynb?token={TOKEN}"))
        assert nb["type"] == "notebook"
        disabled = _disabled_plugins(port)
        for plugin in INSTRUCTOR_PLUGINS:
            assert plugin in disabled, f"{plugin} should be off for learners"
        assert "@jupyter/nbgrader:validate-assignment" not in disabled
        kernels = json.loads(_get(f"http://127.0.0.1:{port}/api/kernelspecs?token={TOKEN}"))
        assert "python3" in kernels["kernelspecs"]
    finally:
        _stop(proc)


@pytest.mark.slow
def test_make_instructor_switches_the_instructor_tools_on_and_lab_off_again():
    port = _free_port()
    proc = _serve("instructor", port)
    try:
        _wait_until_up(proc, port)
        disabled = _disabled_plugins(port)
        assert not any(p in disabled for p in INSTRUCTOR_PLUGINS)
        listing = json.loads(_get(f"http://127.0.0.1:{port}/api/contents?token={TOKEN}"))
        assert {"solutions", "notebooks"} <= {item["name"] for item in listing["content"]}
    finally:
        _stop(proc)
    # `make lab` switches them off again, so the environment is left as a learner expects it
    port = _free_port()
    proc = _serve("lab", port)
    try:
        _wait_until_up(proc, port)
        assert all(p in _disabled_plugins(port) for p in INSTRUCTOR_PLUGINS)
    finally:
        _stop(proc)
