import math
import os

import pyro
import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # one intra-op thread per xdist worker: the tests run small ops, and two workers
    # with two threads each on two cores spend most of their time contending
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def fresh_pyro_state():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    pyro.enable_validation(True)
    yield
    pyro.clear_param_store()


def gradient_samples(elbo, model, guide, params, num_samples, *args, **kwargs):
    """``num_samples`` independent estimates of ``∇ loss`` w.r.t. ``params``, stacked
    as ``[num_samples, total_numel]``."""
    rows = []
    for _ in range(num_samples):
        loss = elbo.differentiable_loss(model, guide, *args, **kwargs)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        rows.append(
            torch.cat(
                [
                    (torch.zeros_like(p) if g is None else g).reshape(-1)
                    for g, p in zip(grads, params, strict=True)
                ]
            )
        )
    return torch.stack(rows)


def exact_gradient(neg_elbo, params):
    grads = torch.autograd.grad(neg_elbo, params, allow_unused=True)
    return torch.cat(
        [
            (torch.zeros_like(p) if g is None else g).reshape(-1)
            for g, p in zip(grads, params, strict=True)
        ]
    ).to(torch.get_default_dtype())


def assert_unbiased(samples, exact, num_sigma=5.0, min_power=0.5):
    """``|mean − exact| < num_sigma · stderr`` for every coordinate.

    Also checks the test has power: for the coordinate with the largest exact
    gradient, ``num_sigma · stderr`` must be below ``min_power · |exact|``; otherwise a
    wrong estimator could pass unnoticed and more samples are needed.
    """
    samples = samples.double()
    exact = exact.double()
    mean = samples.mean(0)
    stderr = samples.std(0) / math.sqrt(samples.shape[0])
    error = (mean - exact).abs()
    tolerance = num_sigma * stderr + 1e-7 * exact.abs() + 1e-9
    message = f"\nexact  {exact.tolist()}\nmean   {mean.tolist()}\nstderr {stderr.tolist()}"
    assert (error < tolerance).all(), "biased gradient" + message
    biggest = exact.abs().argmax()
    assert num_sigma * stderr[biggest] < min_power * exact[biggest].abs(), (
        "test has too little power" + message
    )
