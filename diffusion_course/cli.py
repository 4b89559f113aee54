"""What the course's command lines share: one-line errors with exit code 2, writable outputs.

Every command (``train``, ``sample``, ``evaluate``) checks its input before any long work starts
and reports a problem as one line, ``prog: error: what is wrong; what to do``, on stderr, with
exit code 2 (argparse's own convention for bad usage).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path


class UsageError(ValueError):
    """Bad command-line input: reported in one line, exit code 2."""


def error(prog: str, message: object, rank: int = 0) -> None:
    """Print ``prog: error: message`` on one line (only on rank 0 of a distributed job)."""
    if rank == 0:
        text = " ".join(str(message).split())
        print(f"{prog}: error: {text}", file=sys.stderr)


def check_writable_dir(out: Path, flag: str = "--out") -> None:
    """Create folder ``out`` if needed and prove a file can be written there."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as err:
        raise UsageError(f"cannot write to {flag} {out}: {err.strerror or err}; choose another folder") from err


def check_writable_file(path: Path, flag: str, suffixes: tuple[str, ...]) -> None:
    """``path`` must end in one of ``suffixes`` and its folder must be writable; an existing
    checkpoint is never a valid output."""
    if path.suffix.lower() not in suffixes:
        raise UsageError(f"{flag} {path} must end in {' or '.join(suffixes)}")
    if path.exists() and path.is_dir():
        raise UsageError(f"{flag} {path} is a folder; give a file name")
    check_writable_dir(path.parent if str(path.parent) else Path("."), flag)


def parse(parser: argparse.ArgumentParser, argv) -> argparse.Namespace | int:
    """``parser.parse_args(argv)``, or the exit code argparse chose (2 for bad usage, 0 for --help)."""
    try:
        return parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)


__all__ = ["UsageError", "check_writable_dir", "check_writable_file", "error", "parse"]
