"""Checkpoints: atomic writes that never destroy the last good file, and loads that never run code."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch

from diffusion_course.checkpoint import CheckpointError, atomic_write, load_checkpoint, save_checkpoint, to_plain


def test_round_trip(tmp_path):
    state = {"step": 3, "weights": {"w": torch.arange(6.0).view(2, 3)}, "config": {"mults": [1, 2], "name": "x"}}
    path = save_checkpoint(state, tmp_path / "sub" / "ckpt.pt")
    loaded = load_checkpoint(path)
    assert loaded["step"] == 3 and loaded["config"] == {"mults": [1, 2], "name": "x"}
    assert torch.equal(loaded["weights"]["w"], state["weights"]["w"])
    assert os.listdir(tmp_path / "sub") == ["ckpt.pt"]  # no temporary file left behind


class _Evil:
    def __reduce__(self):
        # if unpickling ever ran this, the marker file would appear
        return (os.system, (f"touch {_Evil.marker}",))


def test_a_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    _Evil.marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": _Evil()}, path)  # a plain pickle with a __reduce__ payload
    with pytest.raises(CheckpointError, match="refusing to load .*not a plain-data checkpoint.*GLOBAL"):
        load_checkpoint(path)
    assert not _Evil.marker.exists()


def test_garbage_and_missing_files_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00not a checkpoint at all")
    with pytest.raises(CheckpointError):
        load_checkpoint(bad)
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="does not hold a checkpoint dictionary"):
        load_checkpoint(tmp_path / "list.pt")


@pytest.mark.parametrize("failure", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch, failure):
    path = tmp_path / "ckpt.pt"
    save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    real_save = torch.save

    def half_written(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.truncate(10)  # the new file is now corrupt ...
        raise failure  # ... and the process dies mid-save

    monkeypatch.setattr(torch, "save", half_written)
    with pytest.raises(type(failure)):
        save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1  # the old checkpoint is untouched
    assert os.listdir(tmp_path) == ["ckpt.pt"]


@pytest.mark.parametrize("failure", [OSError("disk full"), KeyboardInterrupt()])
def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path, failure):
    path = atomic_write(tmp_path / "numbers.bin", lambda f: f.write(b"old contents"))

    def write_half_then_fail(f):
        f.write(b"new but unfin")
        raise failure

    with pytest.raises(type(failure)):
        atomic_write(path, write_half_then_fail)
    assert path.read_bytes() == b"old contents"
    assert os.listdir(tmp_path) == ["numbers.bin"]  # no temporary file left behind


def test_atomic_write_replaces_the_file_and_sets_its_mode(tmp_path):
    path = atomic_write(tmp_path / "data.bin", lambda f: f.write(b"one"))
    assert path.read_bytes() == b"one" and path.stat().st_mode & 0o777 == 0o600  # mkstemp's private default
    atomic_write(path, lambda f: f.write(b"two"), mode=0o644)
    assert path.read_bytes() == b"two" and path.stat().st_mode & 0o777 == 0o644
    assert os.listdir(tmp_path) == ["data.bin"]


def test_atomic_write_syncs_the_data_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("fsync")
        real_fsync(fd)

    def replace(src, dst):
        events.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    atomic_write(tmp_path / "x.bin", lambda f: f.write(b"x"))
    assert events == ["fsync", "replace", "fsync"]  # the data, the rename, then the directory entry


@dataclass
class _Config:
    name: str
    mults: tuple
    size: int | None = None


def test_to_plain_makes_configs_weights_only_safe(tmp_path):
    plain = to_plain({"config": _Config("a", (1, 2)), "path": tmp_path})
    assert plain == {"config": {"name": "a", "mults": [1, 2], "size": None}, "path": str(tmp_path)}
    save_checkpoint(plain, tmp_path / "c.pt")
    assert load_checkpoint(tmp_path / "c.pt") == plain
    with pytest.raises(CheckpointError, match="cannot store a object in a checkpoint"):
        to_plain({"x": object()})
