"""Which timesteps to train on: the distribution of t in DDPM Algorithm 1.

Training draws one timestep per image. DDPM draws it uniformly; Improved DDPM (Nichol &
Dhariwal 2021, sec. 3.3) found that the variational bound ``L_vlb`` has very noisy gradients
under uniform t, because a few early timesteps carry most of its value, and drew t with
probability proportional to ``sqrt(E[L_t^2])`` instead, reweighting each term by
``1 / (T p_t)`` so the estimate of the sum stays unbiased.

These are *timestep* samplers: they pick t during training. The *image* samplers that
turn noise into pictures (DDPM, DDIM, DPM-Solver) live in :mod:`diffusion_course.sampling`.

Both classes share one small protocol: ``sample(B, generator, device) -> (t [B], weights [B])``,
``update(t, losses)`` after each optimizer step, and ``state_dict``/``load_state_dict`` so a
resumed run continues with the same distribution.
"""

from __future__ import annotations

import torch

from .validation import check_choice

TIMESTEP_SAMPLERS = ("uniform", "importance")
"""``uniform``: DDPM Algorithm 1. ``importance``: Improved DDPM sec. 3.3 (for the ``vlb`` loss)."""



class UniformTimesteps:
    """Draw ``t`` uniformly from ``{0, ..., T-1}`` (DDPM Algorithm 1). All weights are 1."""

    def __init__(self, timesteps: int) -> None:
        self.timesteps = timesteps

    def sample(
        self, batch_size: int, *, generator: torch.Generator | None = None, device=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(t [B] long, weights [B] float32)``."""
        t = torch.randint(0, self.timesteps, (batch_size,), generator=generator, device=device)
        return t, torch.ones(batch_size, device=device)

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Uniform sampling learns nothing from the losses."""

    def state_dict(self) -> dict:
        return {"kind": "uniform", "timesteps": self.timesteps}

    def load_state_dict(self, state: dict) -> None:
        _check_sampler_state(state, "uniform", self.timesteps)


class ImportanceTimesteps:
    """Improved DDPM sec. 3.3: ``p_t`` proportional to ``sqrt(E[L_t^2])``.

    A ring buffer keeps the last ``history`` loss values of every ``t``. Until each ``t`` has
    a full history the sampler is uniform; afterwards it draws ``t`` with probability
    ``p_t ~ sqrt(mean(history_t^2))``, mixed with a little uniform mass (``uniform_prob``) so
    no ``t`` is starved, and returns weights ``1 / (T p_t)`` that keep the loss unbiased.
    """

    def __init__(self, timesteps: int, history: int = 10, uniform_prob: float = 0.001) -> None:
        self.timesteps = timesteps
        self.history = history
        self.uniform_prob = uniform_prob
        self.losses = torch.zeros(timesteps, history, dtype=torch.float64)
        self.counts = torch.zeros(timesteps, dtype=torch.long)

    def warmed_up(self) -> bool:
        """True once every t has ``history`` recorded losses."""
        return bool((self.counts >= self.history).all())

    def probabilities(self) -> torch.Tensor:
        """``p_t`` as float64 ``[T]``, summing to 1."""
        if not self.warmed_up():
            return torch.full((self.timesteps,), 1.0 / self.timesteps, dtype=torch.float64)
        p = self.losses.pow(2).mean(dim=1).sqrt()
        p = p / p.sum()
        return p * (1 - self.uniform_prob) + self.uniform_prob / self.timesteps

    def sample(
        self, batch_size: int, *, generator: torch.Generator | None = None, device=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(t [B] long, weights [B] float32)`` with weights ``1 / (T p_t)``."""
        p = self.probabilities()
        probs = p.to(device=device if device is not None else "cpu", dtype=torch.float32)
        t = torch.multinomial(probs, batch_size, replacement=True, generator=generator)
        weights = 1.0 / (self.timesteps * p[t.cpu()])
        return t, weights.to(device=t.device, dtype=torch.float32)

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Record per-example losses ``[B]`` for their timesteps ``t [B]`` (in order)."""
        for ti, li in zip(t.cpu().tolist(), losses.detach().double().cpu().tolist(), strict=True):
            if self.counts[ti] >= self.history:
                self.losses[ti, :-1] = self.losses[ti, 1:].clone()
                self.losses[ti, -1] = li
            else:
                self.losses[ti, self.counts[ti]] = li
            self.counts[ti] += 1

    def state_dict(self) -> dict:
        return {
            "kind": "importance",
            "timesteps": self.timesteps,
            "history": self.history,
            "uniform_prob": self.uniform_prob,
            "losses": self.losses.clone(),
            "counts": self.counts.clone(),
        }

    def load_state_dict(self, state: dict) -> None:
        _check_sampler_state(state, "importance", self.timesteps)
        self.history = int(state["history"])
        self.uniform_prob = float(state["uniform_prob"])
        self.losses = state["losses"].to(torch.float64).clone()
        self.counts = state["counts"].to(torch.long).clone()


def make_timestep_sampler(name: str, timesteps: int) -> UniformTimesteps | ImportanceTimesteps:
    """``"uniform"`` -> :class:`UniformTimesteps`, ``"importance"`` -> :class:`ImportanceTimesteps`."""
    check_choice("timestep sampler", name, TIMESTEP_SAMPLERS)
    return UniformTimesteps(timesteps) if name == "uniform" else ImportanceTimesteps(timesteps)


def _check_sampler_state(state: dict, kind: str, timesteps: int) -> None:
    if state.get("kind") != kind or int(state.get("timesteps", -1)) != timesteps:
        raise ValueError(
            f"timestep sampler state is for {state.get('kind')!r} with T={state.get('timesteps')}, "
            f"but this sampler is {kind!r} with T={timesteps}"
        )


__all__ = ["TIMESTEP_SAMPLERS", "ImportanceTimesteps", "UniformTimesteps", "make_timestep_sampler"]
