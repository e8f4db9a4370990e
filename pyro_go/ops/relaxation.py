"""Noise, conditional reparameterisation and relaxations of REBAR and RELAX.

A Bernoulli or Categorical sample ``b`` is written as a hard threshold (``argmax``) of a
continuous ``z`` that is a differentiable function of the logits ``l`` and uniform
noise ``u`` (RELAX paper, eq. 3; the Gumbel-max trick, its appendix B).  REBAR's key
device is a second sample ``z̃ ~ p(z | b)``, also reparameterised (by noise ``v``), so
that ``E[c(z̃) ∂ log p(b)] = E[∂c(z) − ∂c(z̃)]`` for any differentiable ``c`` (eq. 7,
eq. 9).  Everything here works in log space so that nothing overflows at the
boundaries of the unit interval.

The NumPyro twin, :mod:`numpyro_go.ops.relaxation`, computes the same numbers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def uniform_noise(shape: torch.Size, like: torch.Tensor) -> torch.Tensor:
    """Uniform noise on ``[ε, 1 − ε]`` (``ε`` the dtype's machine epsilon), so that every
    logarithm below stays finite."""
    eps = torch.finfo(like.dtype).eps
    return torch.rand(shape, dtype=like.dtype, device=like.device).clamp(eps, 1 - eps)


def _logit(v: torch.Tensor) -> torch.Tensor:
    return torch.log(v) - torch.log1p(-v)


def logistic_z(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``z = l + log u − log(1 − u)``: a logistic variable with ``H(z) ~ Bernoulli(σ(l))``
    (RELAX eq. 3)."""
    return logits + _logit(u)


def bernoulli_conditional_z(logits: torch.Tensor, b: torch.Tensor, v: torch.Tensor):
    """``z̃ ~ p(z | b)`` for the logistic ``z`` of :func:`logistic_z`.

    With ``θ = σ(l)``, ``u`` given ``b = 1`` is uniform on ``(1 − θ, 1)`` and given ``b = 0``
    on ``(0, 1 − θ)``; substituting ``u = 1 − θ + vθ`` (resp. ``u = v(1 − θ)``) into eq. 3
    gives ``z̃ = softplus(logit v + softplus l)`` (resp.
    ``z̃ = −softplus(−logit v + softplus(−l))``)."""
    logit_v = _logit(v)
    positive = F.softplus(logit_v + F.softplus(logits))
    negative = -F.softplus(-logit_v + F.softplus(-logits))
    return torch.where(b > 0, positive, negative)


def gumbel_z(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``z_k = log π_k − log(−log u_k)``: Gumbel-max noise with
    ``argmax z ~ Categorical(π)`` (RELAX appendix B)."""
    return torch.log_softmax(logits, -1) - torch.log(-torch.log(u))


def categorical_conditional_z(logits: torch.Tensor, b: torch.Tensor, v: torch.Tensor):
    """``z̃ ~ p(z | argmax z = b)`` for the Gumbel ``z`` of :func:`gumbel_z`.

    The maximum of the Gumbels is a Gumbel located at ``log Σπ = 0``:
    ``z̃_b = −log e_b`` with ``e_b = −log v_b``; every other coordinate is a Gumbel with
    location ``log π_i`` truncated below ``z̃_b``:
    ``z̃_i = −log(e_i / π_i + e_b)``, computed as a ``logaddexp``."""
    log_pi = torch.log_softmax(logits, -1)
    exp_noise = -torch.log(v)
    exp_chosen = exp_noise.gather(-1, b.long().unsqueeze(-1))
    others = -torch.logaddexp(torch.log(exp_noise) - log_pi, torch.log(exp_chosen))
    chosen = -torch.log(exp_chosen)
    return others.scatter(-1, b.long().unsqueeze(-1), chosen)


def relaxed_bernoulli(z: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """``σ_λ(z) = σ(z / λ)``, REBAR's relaxation of ``H(z)`` (eq. 5)."""
    return torch.sigmoid(z / temperature)


def relaxed_one_hot(z: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """``softmax(z / λ)``, the Concrete relaxation of ``one_hot(argmax z)`` (eq. 11)."""
    return torch.softmax(z / temperature, -1)


def bernoulli_score(logits: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``∂ log p(b) / ∂l = b − σ(l)``."""
    return b - torch.sigmoid(logits)


def categorical_score(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``∂ log p(b) / ∂l = one_hot(b) − softmax(l)``."""
    one_hot = F.one_hot(index.long(), logits.shape[-1]).to(logits.dtype)
    return one_hot - torch.softmax(logits, -1)
