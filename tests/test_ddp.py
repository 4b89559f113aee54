"""The trainer under torchrun with DistributedDataParallel: 2 CPU processes, gloo backend."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffusion_course.checkpoint import load_checkpoint

HERE = Path(__file__).resolve().parent
ARGS = ["--dataset", "fashion-mnist", "--limit", "64", "--batch-size", "8", "--timesteps", "100",
        "--sample-every", "0", "--no-progress", "--device", "cpu"]  # fmt: skip


def torchrun(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=HERE.parent)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def three_step_run(tmp_path_factory):
    """One torchrun job of 3 steps, shared by the tests below (each launch costs ~10 s)."""
    out = tmp_path_factory.mktemp("ddp") / "run"
    done = torchrun("-m", "diffusion_course.train", *ARGS, "--max-steps", "3", "--log-every", "1",
                    "--out", str(out))
    return out, done


def test_two_processes_train_identical_replicas_and_rank_0_saves(three_step_run):
    out, done = three_step_run
    assert "DDP check: parameters identical on all 2 ranks" in done.stdout
    assert done.stdout.count("diffusion-course-train config:") == 1  # only rank 0 prints
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["step"] == 3 and state["world_size"] == 2
    assert len(state["rng"]) == 2  # each rank's generators, so a resume is exact on every rank
    assert not torch.equal(state["rng"][0]["noise"], state["rng"][1]["noise"])  # ranks draw different noise
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3  # one writer
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "checkpoint.pt", "config.json", "metrics.jsonl"]


def test_the_replica_check_detects_a_drifted_rank():
    done = torchrun(str(HERE / "ddp_sync_helper.py"))
    assert "sync-check-ok" in done.stdout


@pytest.mark.slow
def test_resume_under_ddp_is_bit_exact(three_step_run, tmp_path):
    straight, _ = three_step_run
    torchrun("-m", "diffusion_course.train", *ARGS, "--max-steps", "1", "--out", str(tmp_path))
    torchrun("-m", "diffusion_course.train", *ARGS, "--max-steps", "3", "--out", str(tmp_path), "--resume")
    a = load_checkpoint(straight / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "checkpoint.pt")
    assert a["step"] == b["step"] == 3
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(a["ema"]["weights"][k], b["ema"]["weights"][k]) for k in a["model"])
