"""Learned data-dependent baselines for Pyro's score-function estimator, for fair
comparisons with GO (the paper compares against control-variate methods, section 7.2).

:func:`with_nn_baseline` adds ``infer={"baseline": {"nn_baseline": net,
"nn_baseline_input": x}}`` to named sites of an existing guide, so that
:class:`pyro.infer.TraceGraph_ELBO` subtracts ``net(x)`` from each site's downstream cost
and trains ``net`` by least squares on it (NVIL-style, Mnih & Gregor 2014).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

import pyro
import torch
from pyro import poutine
from torch import nn


class BaselineNetwork(nn.Module):
    """A tanh MLP ``x ↦ b(x)`` with one output per datum (shape ``x.shape[:-1]``).

    :param inputs: size of ``x``'s last dimension.
    :param hidden: hidden layer sizes.
    :param initial: initial output (the bias of the last layer), e.g. a rough initial
        ELBO, so the baseline starts near the costs it must track.
    """

    def __init__(self, inputs: int, hidden: Sequence[int] = (100,), initial: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = []
        for size in hidden:
            layers += [nn.Linear(inputs, size), nn.Tanh()]
            inputs = size
        last = nn.Linear(inputs, 1)
        nn.init.zeros_(last.weight)
        nn.init.constant_(last.bias, initial)
        self.net = nn.Sequential(*layers, last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


def with_nn_baseline(
    guide: Callable, sites: Collection[str], baseline: nn.Module, name: str = "baseline"
) -> Callable:
    """``guide`` with a learned baseline ``baseline(x)`` at each site in ``sites``, where
    ``x`` is the guide's first argument; ``baseline``'s parameters are registered with
    :func:`pyro.module` under ``name`` so that :class:`pyro.infer.SVI` trains them."""

    def guide_with_baseline(x: torch.Tensor, *args, **kwargs):
        pyro.module(name, baseline)
        config = {"baseline": {"nn_baseline": baseline, "nn_baseline_input": x}}

        def infer(msg) -> dict:
            return config if msg["name"] in sites else {}

        return poutine.infer_config(guide, infer)(x, *args, **kwargs)

    return guide_with_baseline
