"""GPU readiness in one command: the course's CUDA paths, tested and timed in under 7 minutes.

On a CUDA machine, from the repository root (nothing to install: the package is found
through ``PYTHONPATH``; no network is needed)::

    PYTHONPATH=. python3 benchmarks/gpu_check.py --cifar-archive .gpu/cifar10-jpg.tar.gz --out runs/gpu_check
    make gpu-check GPU_CHECK_ARGS="--cifar-archive path/to/cifar10-jpg.tar.gz"

Without a CUDA GPU it prints ``no CUDA GPU: nothing to check`` and exits 0.

It runs six parts, each in its own process with a hard time limit (a hung compile or a
crashed CUDA context cannot take the others down), and prints one PASS / FAIL / SKIP line
per part with the error:

1. ``environment``: Python, torch, CUDA and cuDNN versions, the GPU, its memory, bf16 support;
   the package imports without the notebook-only packages (ipywidgets, nbformat, diffusers).
2. ``unit-tests``: ``pytest tests/test_gpu.py`` (fp16 with a gradient scaler, bf16,
   channels_last, CUDA generator capture/restore, exact resume, sampling on CUDA).
3. ``throughput``: ``ddpm-cifar10`` training images/s at batch 128 (32x32x3) in bf16
   autocast + channels_last, with its model-FLOP utilisation (MFU: 3 x forward FLOPs x
   images/s / the card's dense bf16 peak); then the same model trained by the real
   ``Trainer`` on random data. The gap between the two is what the trainer adds per step
   (EMA, clipping, noise and flips, one host synchronisation for the logged loss).
4. ``notebook-03``: the "On a GPU" section of ``solutions/03_training/03_training.ipynb``
   (its code cell tagged ``gpu``) in fast mode, after the import lines of the cells before
   it. CIFAR-10 comes from ``--cifar-archive`` (``cifar10-jpg.tar.gz``), unpacked into the
   data root on first use. The sample grid is saved to ``--out``.
5. ``notebook-05``: notebook 05's GPU cell the same way: a class-conditional CIFAR-10 model
   trained for 100 steps, then 40 samples with classifier-free guidance at w = 1 and 3.
6. ``compiled``: part 3's bare-model measurement with ``torch.compile`` (default mode),
   timed after the compiling warm-up steps.

At the end: a summary table and a ready-to-paste README row. ``--out`` receives the whole
log (``gpu_check.log``), the results as JSON (``results.json``, rewritten after every
part, so a killed run still leaves what it measured), pytest's JUnit XML and the notebook's
sample grid. Exit code 0 when no part failed, 1 when one did, 2 on bad flags.

Expected time on one H100: about 4-5 minutes (most of it compiling); ``--budget`` (default
420 s) bounds the whole run and each part has its own limit on top.

Rehearsal without a GPU (maintainers, before a GPU run): ``--force-cpu`` runs every part on
the CPU with the ``tiny`` U-Net, small batches, ``torch.compile``'s ``aot_eager`` backend
and the notebook cell rewritten for the CPU (:data:`CPU_REWRITES`); the unit tests skip.
It takes a few minutes on a laptop and proves the plumbing, not the GPU.
"""

from __future__ import annotations

import argparse
import ast
import collections
import contextlib
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # the GPU machine runs from a plain checkout, nothing installed
    sys.path.insert(0, str(REPO_ROOT))

NO_CUDA_LINE = "no CUDA GPU: nothing to check"
NOTEBOOK = REPO_ROOT / "solutions" / "03_training" / "03_training.ipynb"
NOTEBOOK_05 = REPO_ROOT / "solutions" / "05_conditioning" / "05_conditioning.ipynb"
GPU_TAG = "gpu"
"""Cell tag that marks the notebook's GPU section."""
GPU_TESTS = "tests/test_gpu.py"
PRESET = "ddpm-cifar10"
MIN_PART_SECONDS = 10
"""A part is skipped rather than started with less time than this left in the budget."""
PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"


@dataclass(frozen=True)
class Part:
    name: str
    limit_s: int  # hard limit on a GPU machine
    dry_run_limit_s: int  # hard limit in a --force-cpu dry run (a slow, busy CPU)
    title: str


PARTS = (
    Part("environment", 60, 300, "torch, CUDA, the GPU, bf16 support, imports"),
    Part("unit-tests", 150, 300, f"pytest {GPU_TESTS}"),
    Part("throughput", 120, 600, f"{PRESET} training images/s, bf16 + channels_last, bare model and Trainer"),
    Part("notebook-03", 150, 600, "notebook 03, section 7 (On a GPU), fast mode"),
    Part("notebook-05", 150, 600, "notebook 05, class-conditional CIFAR-10 with guidance (GPU section), fast mode"),
    Part("compiled", 240, 600, f"{PRESET} training images/s with torch.compile"),
)
PART_NAMES = tuple(p.name for p in PARTS)

# The dry run on the CPU runs the notebook's GPU cell with these replacements (each must match,
# so a changed cell is noticed): the CUDA checks pass, the device is the CPU, the model is tiny.
CPU_REWRITES = (
    ("torch.cuda.is_available()", "True"),
    ("torch.cuda.get_device_name()", "'the CPU (dry run)'"),  # it sits inside a "..." f-string
    ('"cuda"', '"cpu"'),
    ('"ddpm-cifar10"', '"tiny"'),
    ("batch_size=128", "batch_size=8"),
    ("preview(count=16)", "preview(count=2)"),
)
CPU_REWRITES_05 = (  # the same for notebook 05's GPU cell
    ("torch.cuda.is_available()", "True"),
    ('"cuda"', '"cpu"'),
    ('"ddpm-cifar10"', '"tiny"'),
    ('precision="bf16"', 'precision="fp32"'),
    ("batch_size=128", "batch_size=8"),
    ("max_steps=pick(None, 100)", "max_steps=pick(None, 10)"),
)


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/gpu_check", help="folder for the log, results.json and artefacts")
    p.add_argument("--cifar-archive", default=None,
                   help="the course's cifar10-jpg.tar.gz, for the notebook part (default: the data layer's search)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for the whole run (default 420; 3600 for a --force-cpu dry run)")
    p.add_argument("--only", default=None, help=f"comma-separated parts to run (default all: {','.join(PART_NAMES)})")
    p.add_argument("--batch-size", type=int, default=128, help=f"{PRESET} batch for the throughput parts")
    p.add_argument("--steps", type=int, default=30, help="timed steps for the throughput parts")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the GPU's dense bf16 peak TFLOP/s, for MFU (default: from a table of GPU names)")
    # a rehearsal of every code path on the CPU (tiny model, small batch, no inductor)
    p.add_argument("--force-cpu", action="store_true", help=argparse.SUPPRESS)
    # internal: run one part in this process and write its result (the parent runs these)
    p.add_argument("--child", choices=PART_NAMES, default=None, help=argparse.SUPPRESS)
    p.add_argument("--result-file", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    problems = []
    if args.batch_size < 1 or args.steps < 1:
        problems.append("--batch-size and --steps must be positive")
    if args.budget is not None and not args.budget > 0:
        problems.append("--budget must be a positive number of seconds")
    if args.peak_tflops is not None and not args.peak_tflops > 0:
        problems.append("--peak-tflops must be positive")
    if args.only is not None:
        unknown = [n for n in args.only.split(",") if n not in PART_NAMES]
        if unknown:
            problems.append(f"unknown part(s) {', '.join(unknown)} in --only; choose from {', '.join(PART_NAMES)}")
    if args.child is not None and args.result_file is None:
        problems.append("--child needs --result-file")
    if problems:
        p.error("; ".join(problems))  # exits with code 2
    if args.budget is None:
        args.budget = 3600.0 if args.force_cpu else 420.0
    return args


# ---------------------------------------------------------------------------------------
# Running a part in a child process, with a hard limit
# ---------------------------------------------------------------------------------------


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` atomically: a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def run_streaming(cmd: list[str], timeout: float, sink, *, env: dict | None = None,
                  cwd: Path | None = None) -> tuple[int | None, bool, list[str]]:
    """Run ``cmd``, passing each output line (stdout and stderr) to ``sink`` as it comes.

    After ``timeout`` seconds the command's whole process group (compile workers, pytest...)
    is terminated, then killed. Returns ``(exit code or None, timed out, last 40 lines)``.
    """
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                            start_new_session=True)
    _RUNNING.append(proc)
    tail: collections.deque[str] = collections.deque(maxlen=40)

    def pump() -> None:
        for raw in iter(proc.stdout.readline, b""):
            # a progress bar redraws itself after "\r": keep what a terminal would end up showing
            shown = [part for part in raw.decode("utf-8", "replace").rstrip("\n").split("\r") if part.strip()]
            if shown:
                tail.append(shown[-1])
                sink(shown[-1])

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        _stop_group(proc)
    finally:
        _RUNNING.remove(proc)
    reader.join(timeout=10)
    proc.stdout.close()
    return proc.returncode, timed_out, list(tail)


_RUNNING: list[subprocess.Popen] = []
"""Child process groups now running; stopped if this script is terminated."""


def _stop_children(signum, frame) -> None:
    """SIGTERM/SIGINT to this script: stop the running part's whole group, then exit.

    The parts run in their own sessions (so that a timeout can kill a part's whole group),
    which also means that they would outlive this script unless stopped here."""
    for proc in list(_RUNNING):
        _stop_group(proc)
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def _children_stopped_on_exit():
    if threading.current_thread() is not threading.main_thread():
        yield  # handlers can only be installed from the main thread
        return
    previous = {sig: signal.signal(sig, _stop_children) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 5 s, to the process group that ``proc`` leads."""
    for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def run_part(part: Part, args: argparse.Namespace, limit: float, out: Path, say) -> dict:
    """Run ``part`` in a child process (this script with ``--child``) within ``limit`` seconds."""
    result_file = out / f"part-{part.name}.json"
    result_file.unlink(missing_ok=True)
    cmd = [sys.executable, "-u", str(Path(__file__).resolve()), "--child", part.name,
           "--result-file", str(result_file), "--out", str(out),
           "--batch-size", str(args.batch_size), "--steps", str(args.steps)]
    if args.cifar_archive:
        cmd += ["--cifar-archive", str(Path(args.cifar_archive).expanduser().resolve())]
    if args.peak_tflops:
        cmd += ["--peak-tflops", str(args.peak_tflops)]
    if args.force_cpu:
        cmd.append("--force-cpu")
    env = dict(os.environ)
    env.update(PYTHONUNBUFFERED="1", MPLBACKEND="Agg", TQDM_DISABLE="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p))
    start = time.perf_counter()
    code, timed_out, tail = run_streaming(
        cmd, limit, lambda line: say(f"  {time.perf_counter() - start:6.1f}s | {line}"), env=env, cwd=REPO_ROOT)
    seconds = time.perf_counter() - start
    result = {"name": part.name, "status": FAIL, "summary": "", "error": None, "data": {}}
    if result_file.is_file():
        try:
            result.update(json.loads(result_file.read_text()))
        except ValueError as err:
            result["error"] = f"unreadable result file {result_file}: {err}"
    last = " | ".join(tail[-3:]) or "no output"
    if timed_out:
        result["status"] = FAIL
        result["error"] = f"timed out after {limit:.0f} s (its limit); partial results kept"
    elif not result_file.is_file():
        result["error"] = f"the part's process exited with code {code} without a result; last output: {last}"
    elif result["status"] == FAIL and not result.get("error"):
        result["error"] = f"the part's process died (exit code {code}); last output: {last}"
    result["seconds"] = round(seconds, 1)
    return result


# ---------------------------------------------------------------------------------------
# The parent: parts in order, a summary, results.json
# ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args)
    out = Path(args.out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "gpu_check.log", "w", encoding="utf-8")  # noqa: SIM115 (closed at the end)

    def say(message: str = "") -> None:
        print(message, flush=True)
        log.write(message + "\n")
        log.flush()

    started = time.perf_counter()
    report = {"command": [sys.executable, *sys.argv], "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
              "out": str(out), "budget_s": args.budget, "parts": []}
    try:
        import torch

        cuda = torch.cuda.is_available()
    except Exception as err:  # a broken torch install is a finding too
        say(f"FAIL  cannot import torch or query CUDA: {type(err).__name__}: {err}")
        report.update(mode="error", exit_code=1)
        write_json(out / "results.json", report)
        log.close()
        return 1
    if not cuda and not args.force_cpu:
        say(NO_CUDA_LINE)
        if Path("/dev/nvidia0").exists() or Path("/proc/driver/nvidia").exists():
            say(f"note: this machine has an NVIDIA driver, but torch {torch.__version__} (built for CUDA "
                f"{torch.version.cuda}) cannot use it; check the driver version and CUDA_VISIBLE_DEVICES")
        report.update(mode="no-cuda", exit_code=0, torch=torch.__version__, torch_cuda=torch.version.cuda)
        write_json(out / "results.json", report)
        log.close()
        return 0

    report["mode"] = "cuda" if cuda else "force-cpu"
    selected = [p for p in PARTS if args.only is None or p.name in args.only.split(",")]
    say(f"GPU readiness check: {len(selected)} part(s), budget {args.budget:.0f} s, results in {out}")
    if not cuda:
        say("DRY RUN on the CPU (--force-cpu): tiny model, small batches, no inductor; timings mean nothing")
    deadline = started + args.budget
    with _children_stopped_on_exit():
        run_parts(selected, args, cuda, deadline, out, report, say, started)
    failed = [r["name"] for r in report["parts"] if r["status"] == FAIL]
    report["exit_code"] = 1 if failed else 0
    report["readme_row"] = readme_row(report)
    report["elapsed_s"] = round(time.perf_counter() - started, 1)
    write_json(out / "results.json", report)
    say("\n" + summary_table(report))
    say("\nREADME row (benchmarks table):\n" + report["readme_row"])
    say(f"\n{'FAILED: ' + ', '.join(failed) if failed else 'all parts ran'}; "
        f"{report['elapsed_s']:.0f} s; log and results.json in {out}")
    log.close()
    return report["exit_code"]


def run_parts(selected: list[Part], args: argparse.Namespace, cuda: bool, deadline: float, out: Path,
              report: dict, say, started: float) -> None:
    """Run the parts in order, each within its own limit and what is left of the budget."""
    for number, part in enumerate(selected, 1):
        own_limit = part.limit_s if cuda else part.dry_run_limit_s
        limit = min(own_limit, deadline - time.perf_counter())
        say(f"\n=== [{number}/{len(selected)}] {part.name}: {part.title} (limit {max(limit, 0):.0f} s) ===")
        if limit < MIN_PART_SECONDS:
            result = {"name": part.name, "status": SKIP, "error": None, "data": {}, "seconds": 0.0,
                      "summary": f"no time left in the --budget of {args.budget:.0f} s"}
        else:
            try:
                result = run_part(part, args, limit, out, say)
            except Exception as err:  # the runner itself failed (cannot start python, ...)
                result = {"name": part.name, "status": FAIL, "summary": "", "data": {}, "seconds": 0.0,
                          "error": f"could not run the part: {type(err).__name__}: {err}"}
        say(status_line(result))
        report["parts"].append(result)
        report["elapsed_s"] = round(time.perf_counter() - started, 1)
        write_json(out / "results.json", report)


def status_line(result: dict) -> str:
    text = f"{result['status']}  {result['name']} ({result.get('seconds', 0):.0f} s)"
    if result.get("summary"):
        text += f": {result['summary']}"
    if result.get("error"):
        text += f"\n      error: {result['error']}"
    return text


def rate_text(images_per_second: float) -> str:
    """``12,345`` or, for the dry run's small numbers, ``1.53``."""
    return f"{images_per_second:,.0f}" if images_per_second >= 100 else f"{images_per_second:.3g}"


def _speed_text(data: dict | None) -> str:
    if not data:
        return "-"
    text = f"{rate_text(data['images_per_second'])} img/s"
    if data.get("mfu") is not None:
        text += f", MFU {100 * data['mfu']:.1f} %"
    return text


def summary_table(report: dict) -> str:
    rows = [("part", "status", "seconds", "result")]
    for r in report["parts"]:
        detail = r.get("summary") or ""
        if r.get("error"):
            detail = (detail + "; " if detail else "") + "error: " + r["error"].splitlines()[0]
        rows.append((r["name"], r["status"], f"{r.get('seconds', 0):.0f}", detail))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = ["== summary =="]
    for row in rows:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True)) + "  " + row[3])
    return "\n".join(lines)


def _part(report: dict, name: str) -> dict:
    return next((r for r in report["parts"] if r["name"] == name), {})


def readme_row(report: dict) -> str:
    """A row for the README's benchmark table, from whatever the parts measured."""
    env = _part(report, "environment").get("data", {})
    speed = _part(report, "throughput").get("data", {})
    compiled = _part(report, "compiled").get("data", {}).get("compiled")
    tests = _part(report, "unit-tests")
    notebook = _part(report, "notebook-03")
    notebook_05 = _part(report, "notebook-05")
    eager = speed.get("eager")
    bits = [f"{env.get('device_name', '?')}, torch {env.get('torch', '?')} (CUDA {env.get('cuda', '?')})"]
    shape = eager or {}
    bits.append(f"`{shape.get('preset', PRESET)}` bf16 + channels_last, batch {shape.get('batch', '?')}: "
                f"**{_speed_text(eager)}** eager")
    if compiled:
        ratio = f", {compiled['images_per_second'] / eager['images_per_second']:.2f}x eager" if eager else ""
        bits.append(f"**{_speed_text(compiled)}** with torch.compile "
                    f"(compiling {compiled['warmup_seconds']:.0f} s{ratio})")
    if speed.get("trainer"):
        bits.append(f"Trainer {rate_text(speed['trainer']['images_per_second'])} img/s "
                    f"({speed['trainer']['fraction_of_bare']:.2f}x the bare model)")
    if tests:
        bits.append(f"GPU unit tests: {tests.get('summary') or tests.get('status')}")
    if notebook:
        bits.append(f"notebook 03 GPU section: {notebook.get('status')}")
    if notebook_05:
        bits.append(f"notebook 05 GPU section: {notebook_05.get('status')}")
    return ("| `benchmarks/gpu_check.py` | GPU readiness: GPU unit tests, the GPU sections of notebooks 03 and 05, "
            f"`{PRESET}` training images/s and MFU with and without torch.compile | " + "; ".join(bits) + " |")


# ---------------------------------------------------------------------------------------
# The child: one part, its result written to --result-file (also while it runs)
# ---------------------------------------------------------------------------------------


class Result:
    """A part's outcome, written to the result file at every change (a timeout keeps it)."""

    def __init__(self, name: str, path: Path) -> None:
        self.path = path
        self.state = {"name": name, "status": PASS, "summary": "", "error": None, "data": {}}

    def set(self, **values) -> None:
        self.state.update(values)
        self.write()

    def add(self, key: str, value) -> None:
        self.state["data"][key] = value
        self.write()

    def write(self) -> None:
        write_json(self.path, self.state)


def say(message: str) -> None:
    print(message, flush=True)


def child_main(args: argparse.Namespace) -> int:
    result = Result(args.child, Path(args.result_file))
    result.set(status=FAIL)  # until the part says otherwise: a crash leaves a FAIL behind
    try:
        status = CHILD_PARTS[args.child](args, result)
        result.set(status=status)
    except Exception as err:
        traceback.print_exc()
        sys.stdout.flush()
        result.set(status=FAIL, error=f"{type(err).__name__}: {err}")
    return 1 if result.state["status"] == FAIL else 0


def _device(args: argparse.Namespace):
    import torch

    if torch.cuda.is_available() and not args.force_cpu:
        return torch.device("cuda")
    if args.force_cpu:
        return torch.device("cpu")
    raise RuntimeError("no CUDA GPU visible to this process")


def _fast_settings() -> None:
    """What the command-line trainer switches on for CUDA: cuDNN autotuning and TF32."""
    import torch

    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def _installed(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def part_environment(args: argparse.Namespace, result: Result) -> str:
    import importlib

    import torch

    device = _device(args)
    data = {"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "cpu_count": os.cpu_count(), "device": str(device)}
    say(f"python {data['python']} on {data['platform']}, {data['cpu_count']} CPUs")
    say(f"torch {torch.__version__}, built for CUDA {torch.version.cuda}")
    problems = []
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        data.update(
            device_name=props.name, device_count=torch.cuda.device_count(),
            capability=f"{props.major}.{props.minor}", memory_gib=round(props.total_memory / 2**30, 1),
            multiprocessors=props.multi_processor_count, cudnn=torch.backends.cudnn.version(),
            bf16=torch.cuda.is_bf16_supported(),
        )
        free, total = torch.cuda.mem_get_info(device)
        data["free_memory_gib"] = round(free / 2**30, 1)
        say(f"GPU: {props.name} (compute capability {data['capability']}), {data['memory_gib']} GiB "
            f"({data['free_memory_gib']} GiB free), {data['device_count']} device(s), cuDNN {data['cudnn']}")
        # one bf16 matrix product on the GPU, checked against float32
        a = torch.randn(256, 256, device=device)
        ref = a @ a
        got = (a.bfloat16() @ a.bfloat16()).float()
        rel = ((got - ref).norm() / ref.norm()).item()
        data["bf16_matmul_relative_error"] = rel
        say(f"bf16 supported: {data['bf16']}; bf16 matmul relative error vs float32: {rel:.1e}")
        if not data["bf16"] or not rel < 1e-2:
            problems.append("bf16 is not supported or wrong on this GPU: use --precision fp16 or fp32 there")
    else:
        data["device_name"] = "CPU (dry run)"
        data["bf16"] = True
    from diffusion_course.benchmarking import peak_tflops

    data["peak_bf16_tflops"] = args.peak_tflops or peak_tflops(data["device_name"])
    say(f"peak dense bf16 for MFU: {data['peak_bf16_tflops'] or 'unknown (pass --peak-tflops)'} TFLOP/s")
    modules = ["diffusion_course", "diffusion_course.training", "diffusion_course.unet", "diffusion_course.data",
               "diffusion_course.sampling", "diffusion_course.batching", "diffusion_course.viz",
               "diffusion_course.checks", "diffusion_course.benchmarking", "torchvision", "matplotlib", "PIL", "pytest"]
    broken = []
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as err:
            broken.append(f"{name} ({type(err).__name__}: {err})")
    optional = {n: _installed(n) for n in ("ipywidgets", "nbformat", "diffusers")}
    data["optional_packages"] = optional
    say("imports: " + ("all fine" if not broken else "BROKEN: " + "; ".join(broken)))
    say("not needed here, present: " + ", ".join(f"{n} {'yes' if ok else 'no'}" for n, ok in optional.items()))
    if broken:
        problems.append("cannot import " + "; ".join(broken))
    memory = f", {data['memory_gib']} GiB" if "memory_gib" in data else ""
    result.set(data=data, summary=f"{data['device_name']}{memory}, torch {torch.__version__} "
                                  f"(CUDA {torch.version.cuda}), bf16 {'yes' if data['bf16'] else 'NO'}")
    if problems:
        result.set(error="; ".join(problems))
        return FAIL
    return PASS


def part_unit_tests(args: argparse.Namespace, result: Result) -> str:
    import xml.etree.ElementTree as ElementTree

    junit = Path(args.out) / "unit-tests.xml"
    junit.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "pytest", GPU_TESTS, "-q", "-rA", "-p", "no:cacheprovider", f"--junitxml={junit}"]
    say("$ " + " ".join(cmd[1:]))
    code = subprocess.run(cmd, cwd=REPO_ROOT).returncode  # its output goes straight to the log
    if not junit.is_file():
        result.set(error=f"pytest exited with code {code} and wrote no report")
        return FAIL
    counts = collections.Counter()
    failed = []
    for case in ElementTree.parse(junit).getroot().iter("testcase"):
        outcome = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
        counts[outcome] += 1
        if outcome in ("failure", "error"):
            failed.append(case.get("name"))
    summary = ", ".join(f"{counts[k]} {k}" for k in ("passed", "failure", "error", "skipped") if counts[k])
    result.set(summary=summary or "no tests collected", data={"counts": dict(counts), "failed": failed,
                                                               "pytest_exit_code": code})
    if failed or code not in (0, 5):
        result.set(error=f"pytest exit code {code}; failed: {', '.join(failed) or '-'}")
        return FAIL
    if counts["passed"] == 0:
        return SKIP if counts["skipped"] else FAIL
    return PASS


def _speed_record(speed, peak: float | None) -> dict:
    from diffusion_course.benchmarking import model_flops_utilisation

    record = {"preset": speed.preset, "batch": speed.batch, "steps": speed.steps,
              "images_per_second": speed.images_per_second, "forward_gflops_per_image": speed.flops_per_image / 1e9,
              "train_tflops": speed.train_tflops, "warmup_seconds": speed.warmup_seconds,
              "mfu": model_flops_utilisation(speed.flops_per_image, speed.images_per_second, peak) if peak else None}
    mfu = f"MFU {100 * record['mfu']:.1f} % of {peak:.0f} TFLOP/s" if peak else "MFU unknown (no peak for this device)"
    say(f"{speed.preset}: {speed.images_per_second:,.1f} img/s at batch {speed.batch} ({speed.steps} timed steps after "
        f"{speed.warmup_seconds:.1f} s of warm-up); {speed.train_tflops:.2f} TFLOP/s of model FLOPs "
        f"(3 x {speed.flops_per_image / 1e9:.2f} GFLOPs per image); {mfu}")
    return record


def _sizes(args: argparse.Namespace) -> tuple[str, int, int, int]:
    """(preset, batch, timed steps, warm-up steps): the real ones, or the dry run's."""
    if args.force_cpu:
        return "tiny", 4, 2, 1
    return PRESET, args.batch_size, args.steps, 3


def _peak(args: argparse.Namespace, device) -> float | None:
    import torch

    from diffusion_course.benchmarking import peak_tflops

    if args.peak_tflops:
        return args.peak_tflops
    return peak_tflops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None


def trainer_speed(preset: str, device, batch: int, steps: int, warmup: int) -> float:
    """Images/s of the real Trainer (bf16, channels_last) on random data held on ``device``,
    timed from the end of warm-up step ``warmup`` to the end of the last step."""
    import torch

    from diffusion_course.trainer import Trainer
    from diffusion_course.training import TrainConfig
    from diffusion_course.unet import UNet

    stamps: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:  # the final checkpoint goes here and away
        config = TrainConfig(
            dataset="cifar10", model=preset, batch_size=batch, precision="bf16", channels_last=True,
            max_steps=warmup + steps, warmup_steps=0, sample_every=0, checkpoint_every=0,
            log_every=warmup + steps, progress=False, num_workers=0, out=tmp, device=str(device),
        )
        torch.manual_seed(0)
        model = UNet.from_preset(preset)
        size, channels = model.config.image_size, model.config.in_channels
        gen = torch.Generator().manual_seed(0)
        images = (torch.rand(batch * (warmup + steps), channels, size, size, generator=gen) * 2 - 1).to(device)
        labels = torch.zeros(images.shape[0], dtype=torch.long, device=device)
        # the trainer reads the loss on the host after every step, so these stamps are synchronised
        trainer = Trainer(config, model, (images, labels), device=device,
                          callbacks=[lambda trainer, record: stamps.append(time.perf_counter())])
        trainer.train()
    return batch * steps / (stamps[-1] - stamps[warmup - 1])


def part_throughput(args: argparse.Namespace, result: Result) -> str:
    from diffusion_course.benchmarking import training_speed

    device = _device(args)
    _fast_settings()
    preset, batch, steps, warmup = _sizes(args)
    peak = _peak(args, device)
    say(f"bare model: forward, MSE, backward, AdamW on one random batch; bf16 autocast, channels_last, on {device}")
    eager = _speed_record(training_speed(preset, device, batch=batch, steps=steps, warmup_steps=warmup), peak)
    result.add("eager", eager)
    say("the real Trainer, same model and settings, random images held on the device:")
    rate = trainer_speed(preset, device, batch, steps, warmup)
    fraction = rate / eager["images_per_second"]
    result.add("trainer", {"images_per_second": rate, "fraction_of_bare": fraction, "batch": batch, "steps": steps})
    say(f"Trainer: {rate:,.1f} img/s = {fraction:.2f}x the bare model. The difference is the trainer's own work "
        f"per step (EMA of the weights, gradient clipping, noise and flips, metrics) and one host synchronisation "
        f"per step to read the loss; near 1.0 means the GPU, not Python, sets the pace.")
    mfu = f", MFU {100 * eager['mfu']:.1f} %" if eager["mfu"] is not None else ""
    result.set(summary=f"eager {rate_text(eager['images_per_second'])} img/s{mfu}; Trainer {rate_text(rate)} img/s "
                       f"({fraction:.2f}x)")
    return PASS


def part_compiled(args: argparse.Namespace, result: Result) -> str:
    from diffusion_course.benchmarking import training_speed

    device = _device(args)
    _fast_settings()
    preset, batch, steps, warmup = _sizes(args)
    # the dry run exercises torch.compile's graph capture and autograd tracing, not inductor's
    # code generation (minutes of C++ compiling on a small CPU)
    backend = "aot_eager" if args.force_cpu else "inductor"
    say(f"torch.compile(model, backend={backend!r}), default mode; the first {warmup} steps compile and are not timed")
    speed = training_speed(preset, device, batch=batch, steps=steps, warmup_steps=warmup, compile_model=True,
                           compile_backend=backend)
    record = _speed_record(speed, _peak(args, device))
    record["backend"] = backend
    result.add("compiled", record)
    mfu = f", MFU {100 * record['mfu']:.1f} %" if record["mfu"] is not None else ""
    result.set(summary=f"compiled {rate_text(record['images_per_second'])} img/s{mfu}; compiling + warm-up "
                       f"{record['warmup_seconds']:.0f} s")
    return PASS


# -- notebook 03 -------------------------------------------------------------------------


def _strip_magics(source: str) -> str:
    """Drop IPython-only lines (``%matplotlib inline``, ``!pip ...``) so plain Python can run the cell."""
    return "\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!")))


def notebook_gpu_section(path: Path = NOTEBOOK) -> tuple[str, str]:
    """``(setup, cell)``: the top-level import statements of every code cell before the
    notebook's ``gpu``-tagged cell, and that cell's source. Read with the ``json`` module
    (nbformat is not needed). Raises ValueError if there is not exactly one tagged cell."""
    notebook = json.loads(path.read_text(encoding="utf-8"))
    code = [c for c in notebook["cells"] if c.get("cell_type") == "code"]
    tagged = [i for i, c in enumerate(code) if GPU_TAG in c.get("metadata", {}).get("tags", [])]
    if len(tagged) != 1:
        raise ValueError(f"{path.name}: expected one code cell tagged {GPU_TAG!r}, found {len(tagged)}")
    imports = []
    for cell in code[: tagged[0]]:
        source = _strip_magics("".join(cell["source"]))
        tree = ast.parse(source)
        imports += [ast.get_source_segment(source, node) for node in tree.body
                    if isinstance(node, (ast.Import, ast.ImportFrom))]
    return "\n".join(imports) + "\n", _strip_magics("".join(code[tagged[0]]["source"])) + "\n"


def cpu_rewrite(cell: str, rewrites: tuple[tuple[str, str], ...] = CPU_REWRITES) -> str:
    """The GPU cell made to run on the CPU for the dry run (``rewrites``, default :data:`CPU_REWRITES`;
    all must match)."""
    for old, new in rewrites:
        if old not in cell:
            raise ValueError(f"dry run: the GPU cell no longer contains {old!r}; update CPU_REWRITES")
        cell = cell.replace(old, new)
    return cell


def _local_cifar10() -> str | None:
    """Where the data layer would find CIFAR-10 without the network, or None."""
    from diffusion_course import data

    root = data.default_data_root()
    for folder in (root / "cifar10-jpg", root / "cifar-10-batches-py"):
        if folder.is_dir():
            return str(folder)
    archive = data.cifar10_jpg_archive()
    return str(archive) if archive else None


def _run_gpu_cell(args: argparse.Namespace, result: Result, path: Path, rewrites: tuple,
                  figure_prefix: str) -> tuple[dict, list[str]] | None:
    """Run ``path``'s ``gpu`` cell in fast mode after the imports before it, on local CIFAR-10 (see
    :func:`part_notebook`); returns ``(namespace, saved figure paths)``, or None with the error set."""
    os.environ["DIFFUSION_COURSE_FAST"] = "1"
    os.environ.setdefault("MPLBACKEND", "Agg")
    from diffusion_course.data import CIFAR10_JPG_ENV

    if args.cifar_archive:
        archive = Path(args.cifar_archive)
        if not archive.is_file():
            result.set(error=f"--cifar-archive {archive} does not exist; copy cifar10-jpg.tar.gz there")
            return None
        os.environ[CIFAR10_JPG_ENV] = str(archive)  # the data layer unpacks it into its data root
    found = _local_cifar10()
    if found is None:
        result.set(error="no local CIFAR-10 and no network to download it: "
                         "pass --cifar-archive path/to/cifar10-jpg.tar.gz")
        return None
    say(f"CIFAR-10 from {found}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    setup, cell = notebook_gpu_section(path)
    if args.force_cpu:
        cell = cpu_rewrite(cell, rewrites)
    say(f"running {len(setup.splitlines())} import lines of the cells before it, then the cell "
        f"({len(cell.splitlines())} lines) with DIFFUSION_COURSE_FAST=1")
    namespace: dict = {"__name__": "__main__"}
    here = os.getcwd()
    with tempfile.TemporaryDirectory() as work:
        os.chdir(work)  # relative paths the cell writes land in a throw-away folder
        try:
            exec(compile(setup, f"{path.name} (imports)", "exec"), namespace)
            exec(compile(cell, f"{path.name} (GPU cell)", "exec"), namespace)
        finally:
            os.chdir(here)
    figures = []
    for number in plt.get_fignums():
        target = Path(args.out) / f"{figure_prefix}-figure-{number}.png"
        plt.figure(number).savefig(target, dpi=80)
        figures.append(str(target))
    plt.close("all")
    return namespace, figures


def part_notebook(args: argparse.Namespace, result: Result) -> str:
    """Notebook 03's GPU section: ``ddpm-cifar10`` trained by the Trainer on CIFAR-10, a preview."""
    ran = _run_gpu_cell(args, result, NOTEBOOK, CPU_REWRITES, "notebook-03")
    if ran is None:
        return FAIL
    namespace, figures = ran
    run = namespace.get("gpu_result")
    if run is None:
        result.set(error="the cell did not train (no gpu_result): did it take its no-GPU branch?")
        return FAIL
    data = {"step": run.step, "reason": run.reason, "images_per_second": run.images_per_second,
            "last_loss": run.last_loss, "figures": figures}
    result.set(data=data, summary=f"{run.step} steps ({run.reason}), {rate_text(run.images_per_second or 0)} img/s, "
                                  f"last loss {run.last_loss:.3f}, {len(figures)} figure(s) saved")
    if not run.step or run.last_loss is None or not math.isfinite(run.last_loss):
        result.set(error="the run made no step or ended with a NaN loss")
        return FAIL
    return PASS


def part_notebook_05(args: argparse.Namespace, result: Result) -> str:
    """Notebook 05's GPU section: a class-conditional CIFAR-10 model, sampled with guidance 1 and 3."""
    ran = _run_gpu_cell(args, result, NOTEBOOK_05, CPU_REWRITES_05, "notebook-05")
    if ran is None:
        return FAIL
    namespace, figures = ran
    pipe, images = namespace.get("cifar_pipe"), namespace.get("cifar_images")
    if pipe is None or images is None:
        result.set(error="the cell did not train and sample (no cifar_pipe / cifar_images): "
                         "did it take its no-GPU branch?")
        return FAIL
    step = (pipe.checkpoint or {}).get("step")
    data = {"step": step, "images": list(images.shape), "finite": bool(images.isfinite().all()),
            "classes": list(pipe.class_names or []), "figures": figures}
    result.set(data=data, summary=f"{step} steps, {images.shape[0]} guided samples "
                                  f"{tuple(images.shape[1:])}, {len(figures)} figure(s) saved")
    if not step or not data["finite"] or images.shape[0] != 40 or len(data["classes"]) != 10:
        result.set(error="expected a trained 10-class model and 40 finite samples (20 at w = 1, 20 at w = 3)")
        return FAIL
    return PASS


CHILD_PARTS = {
    "environment": part_environment,
    "unit-tests": part_unit_tests,
    "throughput": part_throughput,
    "notebook-03": part_notebook,
    "notebook-05": part_notebook_05,
    "compiled": part_compiled,
}


if __name__ == "__main__":
    sys.exit(main())
