import os

import pyro
import pytest
import torch
from unbiasedness import assert_unbiased as shared_assert_unbiased

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


def assert_unbiased(samples, exact, **kwargs):
    """:func:`unbiasedness.assert_unbiased` for torch tensors on any device."""
    shared_assert_unbiased(samples.detach().cpu(), exact.detach().cpu(), **kwargs)
