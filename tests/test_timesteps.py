"""Timestep samplers: the distribution of t in DDPM Algorithm 1 (uniform, Improved DDPM's importance sampling)."""

from __future__ import annotations

import pytest
import torch

from diffusion_course.timesteps import TIMESTEP_SAMPLERS, ImportanceTimesteps, UniformTimesteps, make_timestep_sampler


def test_uniform_sampler_covers_the_range_reproducibly():
    s = UniformTimesteps(10)
    t1, w = s.sample(2000, generator=torch.Generator().manual_seed(0))
    t2, _ = s.sample(2000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(t1, t2) and torch.equal(w, torch.ones(2000))
    counts = torch.bincount(t1, minlength=10)
    assert counts.min() > 150 and t1.max() == 9


def test_importance_sampler_follows_sqrt_mean_square_loss():
    s = ImportanceTimesteps(4, history=3, uniform_prob=0.0)
    assert torch.allclose(s.probabilities(), torch.full((4,), 0.25, dtype=torch.float64))
    for _ in range(3):  # fill every history; loss of t is proportional to t + 1
        s.update(torch.arange(4), torch.arange(1.0, 5.0))
    assert s.warmed_up()
    assert torch.allclose(s.probabilities(), torch.arange(1.0, 5.0, dtype=torch.float64) / 10)
    t, w = s.sample(20000, generator=torch.Generator().manual_seed(1))
    freq = torch.bincount(t, minlength=4).double() / 20000
    assert torch.allclose(freq, torch.arange(1.0, 5.0, dtype=torch.float64) / 10, atol=0.01)
    # importance weights 1 / (T p_t) make the weighted loss an unbiased estimate of the mean loss
    assert torch.allclose(w, (1 / (4 * (t.double() + 1) / 10)).float())


def test_importance_sampler_history_is_a_ring_buffer_and_round_trips():
    s = ImportanceTimesteps(2, history=2)
    s.update(torch.tensor([0, 0, 0]), torch.tensor([1.0, 2.0, 3.0]))
    assert s.losses[0].tolist() == [2.0, 3.0] and s.counts[0] == 3
    other = make_timestep_sampler("importance", 2)
    other.load_state_dict(s.state_dict())
    assert torch.equal(other.losses, s.losses) and torch.equal(other.counts, s.counts)
    with pytest.raises(ValueError, match="timestep sampler state is for 'importance'"):
        make_timestep_sampler("uniform", 2).load_state_dict(s.state_dict())
    with pytest.raises(ValueError, match="unknown timestep sampler"):
        make_timestep_sampler("cosine", 2)


def test_make_timestep_sampler_knows_the_vocabulary():
    assert TIMESTEP_SAMPLERS == ("uniform", "importance")
    assert isinstance(make_timestep_sampler("uniform", 5), UniformTimesteps)
    assert isinstance(make_timestep_sampler("importance", 5), ImportanceTimesteps)
    with pytest.raises(ValueError, match="^unknown timestep sampler 'cosine'; choose one of: uniform, importance$"):
        make_timestep_sampler("cosine", 5)


def test_uniform_sampler_state_names_its_kind_and_T():
    s = UniformTimesteps(10)
    UniformTimesteps(10).load_state_dict(s.state_dict())
    with pytest.raises(ValueError, match="is for 'uniform' with T=10, but this sampler is 'uniform' with T=20"):
        UniformTimesteps(20).load_state_dict(s.state_dict())


def test_importance_sampler_mixes_in_uniform_mass_so_no_t_is_starved():
    s = ImportanceTimesteps(3, history=1, uniform_prob=0.3)
    s.update(torch.tensor([0, 1, 2]), torch.tensor([0.0, 1.0, 1.0]))  # t = 0 has no loss at all
    p = s.probabilities()
    assert torch.allclose(p, torch.tensor([0.1, 0.45, 0.45], dtype=torch.float64))
    assert p.sum().item() == pytest.approx(1.0)
