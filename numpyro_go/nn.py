"""Linear layers that absorb perturbation stacks: the JAX side of fast ``D_y f``.

Inside :class:`~numpyro_go.TraceGO_ELBO` the model runs under ``jax.vmap`` over a stack
of perturbed values of a discrete site.  For a Bernoulli or count site whose only coupled
dim is the last one, entry ``e`` changes coordinate ``i_e`` of the last dim by ``d_e`` (a
flip, ``y + 1``) in every plate slice, so a first layer ``x @ W + b`` need not run a
matrix product per entry: ``x_e W = x_0 W + d_e W[i_e]``, with ``x_0 W`` computed once
outside the ``vmap`` — the GO authors' trick for the discrete VAE (appendix I), made
generic.

JAX arrays cannot carry that structure the way a torch subclass does (the Pyro backend's
:class:`~pyro_go.infer.linear_absorption.OneCoordinateStack`), so the estimator records,
while it replays the model, which traced value is such a stack (:func:`absorbing`), and
:func:`linear` — a drop-in for ``x @ W + b`` that users put in the layer that first
consumes a discrete latent, or the :func:`Dense` stax layer — uses the structure when it
is handed exactly that value.  Any other input, or any call outside a replay, computes
``x @ W + b``.  ``TraceGO_ELBO(absorb_linear=False)`` turns the shortcut off.

When the perturbed site is binary, the layer's output is itself structured — the same
logits ``h`` shifted by ``±W[i]`` — and if it goes straight into an observed
``Bernoulli(logits=...)`` the estimator evaluates that likelihood in closed form
(:func:`numpyro_go.infer.perturbation.shifted_bernoulli_log_prob`): the flipped
likelihood needs no ``softplus`` per entry, which is what makes the flips cheap.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jax.example_libraries import stax


@dataclass(frozen=True)
class OneCoordinateStack:
    """``value`` (one stack entry under ``vmap``) equals ``base`` with coordinate
    ``coordinate`` of the last dim changed by ``change`` (shape ``base.shape[:-1]``), to
    ``alternatives[alternative]``'s value there (``alternatives``: ``[A, *base.shape]``,
    the same for every entry)."""

    value: jax.Array
    base: jax.Array
    coordinate: jax.Array
    change: jax.Array
    alternatives: jax.Array
    alternative: jax.Array
    #: whether ``change`` is always ``−1``, ``0`` or ``1`` (a binary site's flips)
    binary: bool = False


@dataclass(frozen=True)
class ShiftedOutput:
    """``value`` (one stack entry under ``vmap``), the output of :func:`linear` on a
    binary :class:`OneCoordinateStack`, equals ``base + change · weight[coordinate]``
    with ``base`` the same for every entry: a logit vector shifted by ``±`` one row."""

    value: jax.Array
    base: jax.Array
    change: jax.Array
    coordinate: jax.Array
    weight: jax.Array


_ACTIVE: list[OneCoordinateStack] = []
_SHIFTED: list[ShiftedOutput] = []


@contextlib.contextmanager
def absorbing(stack: OneCoordinateStack) -> Iterator[None]:
    """Within this context, :func:`linear` applied to ``stack.value`` uses the
    structure, and records its output's (:func:`shifted_output`)."""
    _ACTIVE.append(stack)
    recorded = len(_SHIFTED)
    try:
        yield
    finally:
        _ACTIVE.remove(stack)
        del _SHIFTED[recorded:]


def shifted_output(x: jax.Array) -> ShiftedOutput | None:
    """The structure of ``x`` if it is the output of :func:`linear` on a binary stack
    entry inside the current :func:`absorbing` context."""
    return next((shifted for shifted in _SHIFTED if shifted.value is x), None)


def linear(x: jax.Array, weight: jax.Array, bias: jax.Array | None = None) -> jax.Array:
    """``x @ weight + bias``, computed as ``base @ weight + change · weight[i]`` when ``x``
    is a perturbation stack entry recorded by :func:`absorbing` (module docstring).

    :param x: input ``[..., d_in]``.
    :param weight: ``[d_in, d_out]``.
    :param bias: ``[d_out]`` or ``None``.
    """
    stack = next((s for s in _ACTIVE if s.value is x), None)
    if stack is None:
        out = x @ weight
        return out if bias is None else out + bias
    base = stack.base @ weight
    if bias is not None:
        base = base + bias
    out = base + stack.change[..., None] * jnp.take(weight, stack.coordinate, axis=0)
    if stack.binary:
        _SHIFTED.append(ShiftedOutput(out, base, stack.change, stack.coordinate, weight))
    return out


def Dense(out_dim: int, W_init=None, b_init=None):  # noqa: N802  (stax naming)
    """:func:`jax.example_libraries.stax.Dense` (same parameters and initialisation)
    computed with :func:`linear`."""
    kwargs = {}
    if W_init is not None:
        kwargs["W_init"] = W_init
    if b_init is not None:
        kwargs["b_init"] = b_init
    init_fun, _ = stax.Dense(out_dim, **kwargs)

    def apply_fun(params, inputs, **_):
        weight, bias = params
        return linear(inputs, weight, bias)

    return init_fun, apply_fun


__all__ = ["Dense", "OneCoordinateStack", "ShiftedOutput", "absorbing", "linear", "shifted_output"]
