"""TraceGO_ELBO and TraceRELAX_ELBO run wherever the tensors live: no CPU-only code paths.

CI has no GPU, so it runs the ``cpu`` variants; on a CUDA machine the same tests run on
the GPU (``pytest tests/pyro/test_devices.py``).
"""

import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import assert_unbiased, exact_gradient, gradient_samples
from test_unbiased import bernoulli_exact_neg_elbo, bernoulli_guide, bernoulli_model

from pyro_go import TraceGO_ELBO, TraceRELAX_ELBO
from pyro_go.distributions import GOPoisson

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_unbiased_on_device(device):
    with torch.device(device):
        bernoulli_guide()
        bernoulli_model()
        params = [pyro.param("logits").unconstrained(), pyro.param("prior_logits").unconstrained()]
        assert params[0].device.type == device
        exact = exact_gradient(bernoulli_exact_neg_elbo(), params)
        samples = gradient_samples(TraceGO_ELBO(), bernoulli_model, bernoulli_guide, params, 800)
    assert samples.device.type == device
    assert_unbiased(samples.cpu(), exact.cpu())


@pytest.mark.parametrize("device", DEVICES)
def test_relax_unbiased_on_device(device):
    """Noise, control-variate parameters and the default network follow the logits."""
    with torch.device(device):
        bernoulli_guide()
        bernoulli_model()
        params = [pyro.param("logits").unconstrained(), pyro.param("prior_logits").unconstrained()]
        exact = exact_gradient(bernoulli_exact_neg_elbo(), params)
        elbo = TraceRELAX_ELBO()
        samples = gradient_samples(elbo, bernoulli_model, bernoulli_guide, params, 1500)
    assert samples.device.type == device
    assert pyro.param("z.relax_eta").device.type == device
    assert_unbiased(samples.cpu(), exact.cpu())


def mixed_model(data):
    decoder = pyro.param("decoder", torch.randn(3, 4))
    rate = pyro.param("prior_rate", torch.tensor(2.0), constraint=dist.constraints.positive)
    lam = pyro.sample("lam", dist.Gamma(2.0, 1.0))
    with pyro.plate("data", data.shape[0]):
        z = pyro.sample("z", dist.Bernoulli(0.4 * torch.ones(3)).to_event(1))
        y = pyro.sample("y", dist.Categorical(torch.ones(3) / 3))
        n = pyro.sample("n", dist.Poisson(rate * lam))
        logits = z @ decoder + 0.3 * y.unsqueeze(-1) + 0.1 * n.unsqueeze(-1)
        pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=data)


def mixed_guide(data):
    encoder = pyro.param("encoder", torch.randn(4, 3) * 0.1)
    cat = pyro.param("cat", torch.zeros(4, 3))
    a = pyro.param("a", torch.tensor(2.0), constraint=dist.constraints.positive)
    lam = pyro.sample("lam", dist.Gamma(a, 1.0))
    with pyro.plate("data", data.shape[0]):
        pyro.sample("z", dist.Bernoulli(logits=data @ encoder).to_event(1))
        pyro.sample("y", dist.Categorical(logits=data @ cat))
        pyro.sample("n", dist.Poisson(lam * torch.ones(data.shape[0])))


@pytest.mark.parametrize("device", DEVICES)
def test_mixed_sites_stay_on_device(device):
    with torch.device(device):
        data = (torch.rand(5, 4) > 0.5).float()
        mixed_guide(data)
        mixed_model(data)
        elbo = TraceGO_ELBO(num_particles=2, vectorize_particles=True)
        loss = elbo.differentiable_loss(mixed_model, mixed_guide, data)
        loss.backward()
        for name in ("encoder", "cat", "a", "decoder", "prior_rate"):
            grad = pyro.param(name).unconstrained().grad
            assert grad is not None and grad.device.type == device, name
            assert torch.isfinite(grad).all() and grad.abs().sum() > 0, name

        rate = torch.tensor([1.5, 3.0], requires_grad=True)
        objective = GOPoisson(rate).go_surrogate(lambda v: -(v - 2.0).pow(2).sum(-1))
        (grad,) = torch.autograd.grad(objective, rate)
        assert grad.device.type == device
