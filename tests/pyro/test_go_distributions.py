"""GO-enabled distributions and the functional helper, outside an ELBO."""

import itertools

import pyro.distributions as dist
import pytest
import torch
from conftest import assert_unbiased

from pyro_go.distributions import (
    GOBernoulli,
    GOCategorical,
    GONegativeBinomial,
    GOPoisson,
    go_surrogate,
)

TARGET = torch.tensor([1.0, 0.0, 1.0])


def objective(values):
    """A nonlinear function of a coupled vector, broadcasting over the leading dim."""
    return torch.cos((values - TARGET).pow(2).sum(-1) + values[..., 0] * values[..., 2])


def test_go_surrogate_bernoulli_vector_is_unbiased():
    logits = torch.tensor([0.3, -0.5, 1.0], requires_grad=True)
    exact = 0.0
    for bits in itertools.product([0.0, 1.0], repeat=3):
        y = torch.tensor(bits)
        exact = exact + dist.Bernoulli(logits=logits).log_prob(y).sum().exp() * objective(y)
    (exact_grad,) = torch.autograd.grad(exact, logits)
    torch.manual_seed(0)
    samples = []
    for _ in range(3000):
        fn = GOBernoulli(logits=logits)
        (grad,) = torch.autograd.grad(fn.go_surrogate(objective), logits)
        samples.append(grad)
    assert_unbiased(torch.stack(samples), exact_grad)


def test_go_surrogate_categorical_raw_form_is_unbiased():
    logits = torch.tensor([0.2, -0.1, 0.4, 0.0], requires_grad=True)
    table = torch.tensor([0.5, -1.0, 2.0, 0.3])

    def f(values):
        return table[values.long()].sin().reshape(values.shape[0], -1).sum(-1)

    exact = (torch.softmax(logits, -1) * table.sin()).sum()
    (exact_grad,) = torch.autograd.grad(exact, logits)
    torch.manual_seed(0)
    samples = [
        torch.autograd.grad(
            go_surrogate(GOCategorical(logits=logits), f, categorical_form="raw"), logits
        )[0]
        for _ in range(3000)
    ]
    assert_unbiased(torch.stack(samples), exact_grad)


def test_carrier_has_value_and_variable_nabla_gradient():
    rate = torch.tensor([2.0, 5.0], requires_grad=True)
    y = torch.tensor([1.0, 7.0])
    carrier = GOPoisson(rate).carrier(y)
    assert torch.equal(carrier.detach(), y)
    (grad,) = torch.autograd.grad(carrier.sum(), rate)
    torch.testing.assert_close(grad, torch.ones(2))

    r = torch.tensor(3.0, requires_grad=True)
    p = torch.tensor(0.4, requires_grad=True)
    fn = GONegativeBinomial(r, probs=p)
    nabla = fn.variable_nabla(torch.tensor(4.0))
    grads = torch.autograd.grad(fn.carrier(torch.tensor(4.0)), (r, p))
    torch.testing.assert_close(grads[0], nabla["total_count"])
    torch.testing.assert_close(grads[1], nabla["probs"])
    torch.testing.assert_close(nabla["probs"], (4.0 + 3.0) / (1 - p.detach()))


def test_go_distributions_behave_like_pyro_ones():
    fn = GOBernoulli(probs=torch.full((2, 3), 0.3))
    assert isinstance(fn, dist.Bernoulli)
    assert fn.expand([4, 2, 3]).batch_shape == (4, 2, 3)
    assert fn.to_event(1).event_shape == (3,)
    assert fn.log_prob(torch.ones(2, 3)).shape == (2, 3)


def test_go_surrogate_checks_f_shape_and_rsample():
    with pytest.raises(ValueError, match="shape \\[n\\]"):
        go_surrogate(GOBernoulli(probs=torch.full((3,), 0.5)), lambda v: v)
    with pytest.raises(ValueError, match="leave value=None"):
        go_surrogate(dist.Normal(0.0, 1.0), lambda v: v, value=torch.tensor(0.0))
