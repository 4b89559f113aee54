"""Fast mode, device resolution and seeding."""

from __future__ import annotations

import pytest
import torch

from diffusion_course import runtime


@pytest.mark.parametrize(
    ("env", "expected"),
    [({}, False), ({"DIFFUSION_COURSE_FAST": "1"}, True), ({"DIFFUSION_COURSE_FAST": "no"}, False),
     ({"NBGRADER_EXECUTION": "autograde"}, True)],
)
def test_fast_mode(monkeypatch, env, expected):
    monkeypatch.delenv("DIFFUSION_COURSE_FAST", raising=False)
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert runtime.fast_mode() is expected
    assert runtime.pick("full", "fast") == ("fast" if expected else "full")


def _pretend(monkeypatch, cuda: bool, mps: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


@pytest.mark.parametrize(("cuda", "mps", "expected"),
                         [(True, True, "cuda"), (True, False, "cuda"), (False, True, "mps"), (False, False, "cpu")])
def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, expected):
    _pretend(monkeypatch, cuda, mps)
    assert runtime.get_device("auto") == torch.device(expected)
    assert runtime.get_device(None) == torch.device(expected)


def test_get_device():
    assert runtime.get_device("cpu") == torch.device("cpu")
    assert runtime.get_device("CPU") == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        runtime.get_device("tpu")


def test_an_unavailable_device_is_a_clear_error(monkeypatch):
    _pretend(monkeypatch, cuda=False, mps=False)
    with pytest.raises(ValueError, match="^device 'cuda' was requested but CUDA is not available; use --device cpu$"):
        runtime.get_device("cuda")
    with pytest.raises(ValueError, match="^device 'cuda' was requested"):
        runtime.get_device("cuda:1")
    with pytest.raises(ValueError, match="^device 'mps' was requested but MPS is not available; use --device cpu$"):
        runtime.get_device("mps")
    _pretend(monkeypatch, cuda=True, mps=True)
    assert runtime.get_device("cuda:1") == torch.device("cuda", 1)
    assert runtime.get_device("mps") == torch.device("mps")


def test_seed_everything_is_reproducible():
    g1 = runtime.seed_everything(7)
    a, ga = torch.rand(3), torch.rand(3, generator=g1)
    g2 = runtime.seed_everything(7)
    assert torch.equal(a, torch.rand(3)) and torch.equal(ga, torch.rand(3, generator=g2))


# --- random states in checkpoints -----------------------------------------------------------


def _draws(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.rand(4, generator=generator), torch.rand(4)


def test_rng_state_round_trip_restores_the_noise_generator_and_torchs_global_one():
    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(4)
    state = runtime.capture_rng_state(gen)
    assert set(state) == {"device", "noise", "torch_cpu"} and state["device"] == "cpu"  # no Python/NumPy state
    expected = _draws(gen)
    _draws(gen)  # move both on
    assert runtime.restore_rng_state(state, gen) is True
    got = _draws(gen)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_rng_state_of_an_older_checkpoint_with_python_and_numpy_states_is_accepted():
    gen = torch.Generator().manual_seed(5)
    state = runtime.capture_rng_state(gen)
    expected = _draws(gen)
    del state["device"]  # version 1 states had no "device" but Python's and NumPy's states
    state["python"] = [3, [1, 2, 3], None]
    state["numpy"] = ["MT19937", [0] * 624, 624, 0, 0.0]
    assert runtime.restore_rng_state(state, gen) is True
    got = _draws(gen)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def _cuda_state(cpu_state: dict, with_device: bool = True) -> dict:
    """What a CUDA run's state looks like: a CUDA generator's state is 16 bytes (seed, offset)."""
    state = {"noise": torch.zeros(16, dtype=torch.uint8), "torch_cpu": cpu_state["torch_cpu"],
             "torch_cuda": torch.zeros(16, dtype=torch.uint8)}
    return {"device": "cuda", **state} if with_device else state


@pytest.mark.parametrize("with_device", [True, False], ids=["v2", "v1-no-device-entry"])
def test_a_cuda_state_restored_on_the_cpu_keeps_the_generator_and_says_so(with_device):
    torch.manual_seed(6)
    saved = runtime.capture_rng_state(torch.Generator())
    expected_global = torch.rand(4)
    gen = torch.Generator().manual_seed(7)
    before = gen.get_state()
    assert runtime.restore_rng_state(_cuda_state(saved, with_device), gen) is False
    assert torch.equal(gen.get_state(), before)  # left alone, not half-restored
    assert torch.equal(torch.rand(4), expected_global)  # what can be restored is


def test_a_cpu_state_is_not_forced_onto_a_generator_of_another_device():
    class FakeCudaGenerator:  # no CUDA here: only its device type matters
        device = torch.device("cuda")

        def set_state(self, state):
            raise AssertionError("a CPU state must not be loaded into a CUDA generator")

    state = runtime.capture_rng_state(torch.Generator().manual_seed(8))
    assert runtime.restore_rng_state(state, FakeCudaGenerator()) is False
