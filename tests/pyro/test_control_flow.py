"""Python control flow on latent values: a discrete value read as Python data (``if``,
``bool``, ``int``, ``range``) in the model is replayed one perturbation at a time and
every later term counts as depending on it; a value the guide reads that way makes the
site internal (score function), with every later guide and model term in its cost."""

import itertools
import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import assert_unbiased, exact_gradient, gradient_samples
from shared_cases import BRANCH, COUNT_SITES

from pyro_go import TraceGO_ELBO
from pyro_go.infer.trace_utils import trace_with_provenance
from pyro_go.ops.provenance import provenance_of
from pyro_go.poutine import GOSampleMessenger

# ------------------------------------------------------------- branching on a latent

ONES = torch.ones(3)
BRANCH_OBS = torch.tensor(BRANCH["obs"])


def branch_model():
    z = pyro.sample("z", dist.Bernoulli(0.5 * ONES).to_event(1))
    loc = 2.0 if z[..., 0].all() else -1.0
    pyro.sample("x", dist.Normal(loc + z, 1.0).to_event(1), obs=BRANCH_OBS)


def branch_guide():
    logits = pyro.param("logits", torch.tensor(BRANCH["logits"]))
    pyro.sample("z", dist.Bernoulli(logits=logits).to_event(1))


def branch_exact_neg_elbo():
    logits = pyro.param("logits").double()
    total = 0.0
    for bits in itertools.product([0.0, 1.0], repeat=3):
        z = torch.tensor(bits).double()
        log_q = dist.Bernoulli(logits=logits).log_prob(z).sum()
        loc = 2.0 if bits[0] else -1.0
        log_p = 3 * math.log(0.5) + dist.Normal(loc + z, 1.0).log_prob(BRANCH_OBS.double()).sum()
        total = total + log_q.exp() * (log_p - log_q)
    return -total


@pytest.mark.parametrize("vectorize", [True, False], ids=["vectorized", "one-at-a-time"])
def test_branch_on_a_latent(vectorize):
    branch_guide()
    params = [pyro.param("logits").unconstrained()]
    exact = exact_gradient(branch_exact_neg_elbo(), params)
    elbo = TraceGO_ELBO(vectorize_perturbations=vectorize)
    samples = gradient_samples(elbo, branch_model, branch_guide, params, 800)
    assert_unbiased(samples, exact)
    # the model reads z: each of its 3 elements is perturbed in a replay of its own
    assert elbo.last_num_evaluations == 1 + 3


def test_model_read_marks_every_later_term():
    traces = trace_with_provenance(
        GOSampleMessenger()(branch_guide), branch_model, (), {}, max_plate_nesting=1
    )
    assert traces.model_reads == {"z"} and not traces.guide_reads
    assert "z" in provenance_of(traces.model_trace.nodes["x"]["log_prob"])


def test_validation_reads_do_not_count():
    """Distribution argument and support checks read values as Python ``bool``: they
    pass or raise, so they decide nothing."""

    def model():
        z = pyro.sample("z", dist.Bernoulli(0.5))
        pyro.sample("x", dist.Normal(z, 1.0), obs=torch.tensor(0.3))

    def guide():
        pyro.sample("z", dist.Bernoulli(pyro.param("p", torch.tensor(0.4))))

    with pyro.validation_enabled(True):
        traces = trace_with_provenance(GOSampleMessenger()(guide), model, (), {}, 0)
    assert not traces.model_reads and not traces.guide_reads


# ------------------------------------------- a count that sets how many sites follow


def count_model():
    n = pyro.sample("n", dist.Poisson(COUNT_SITES["prior_rate"]))
    total = 0.0
    for i in range(int(n)):
        total = total + pyro.sample(f"z_{i}", dist.Bernoulli(0.3))
    pyro.sample("x", dist.Normal(total, 1.0), obs=torch.tensor(COUNT_SITES["obs"]))


def count_guide():
    rate = pyro.param(
        "rate", torch.tensor(COUNT_SITES["rate"]), constraint=dist.constraints.positive
    )
    l0 = pyro.param("l0", torch.tensor(COUNT_SITES["l0"]))
    l1 = pyro.param("l1", torch.tensor(COUNT_SITES["l1"]))
    n = pyro.sample("n", dist.Poisson(rate))
    for i in range(int(n)):
        pyro.sample(f"z_{i}", dist.Bernoulli(logits=l0 + l1 * i))


def count_exact_neg_elbo(max_count=40):
    """Truncated sum over ``n``; given ``n``, ``Σ z_i`` has mean ``Σ p_i`` and variance
    ``Σ p_i (1 − p_i)``, which give ``E log N(x; Σ z_i, 1)`` in closed form."""
    rate, l0, l1 = (pyro.param(n).double() for n in ("rate", "l0", "l1"))
    prior = dist.Bernoulli(torch.tensor(0.3).double())
    total = 0.0
    for n in range(max_count):
        count = torch.tensor(float(n)).double()
        log_q_n = dist.Poisson(rate).log_prob(count)
        log_p_n = dist.Poisson(torch.tensor(COUNT_SITES["prior_rate"])).log_prob(count)
        probs = torch.sigmoid(l0 + l1 * torch.arange(n).double())
        kl = 0.0
        for value in (0.0, 1.0):
            q = probs if value else 1 - probs
            kl = kl + (q * (q.log() - prior.log_prob(torch.tensor(value).double()))).sum()
        mean, variance = probs.sum(), (probs * (1 - probs)).sum()
        likelihood = -0.5 * math.log(2 * math.pi) - 0.5 * (
            (COUNT_SITES["obs"] - mean) ** 2 + variance
        )
        total = total + log_q_n.exp() * (log_p_n - log_q_n - kl + likelihood)
    return -total


def test_count_that_sets_the_number_of_sites():
    count_guide()
    params = [pyro.param(n).unconstrained() for n in ("rate", "l0", "l1")]
    exact = exact_gradient(count_exact_neg_elbo(), params)
    elbo = TraceGO_ELBO()
    with pytest.warns(UserWarning, match="'n' has children.*reads 'n' as a Python value"):
        elbo.differentiable_loss(count_model, count_guide)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        samples = gradient_samples(elbo, count_model, count_guide, params, 1200)
    assert_unbiased(samples, exact)


def test_guide_read_site_is_internal_even_without_later_sites():
    """Whether sites follow ``n`` depends on its value: the estimator must not."""
    elbo = TraceGO_ELBO(strict=True)
    pyro.param("rate", torch.tensor(1e-6), constraint=dist.constraints.positive)
    with pytest.raises(ValueError, match=r"'n' has children in the guide \(none in this sample\)"):
        elbo.differentiable_loss(count_model, count_guide)


# ------------------------------------------------------- no reads: nothing changes


def test_plated_model_without_reads_keeps_the_stacked_replay():
    """Validation reads aside, a model that reads nothing keeps the plate-sliced,
    stacked replay: one evaluation besides the base."""

    def model():
        with pyro.plate("data", 3):
            z = pyro.sample("z", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(z, 1.0), obs=BRANCH_OBS)

    def guide():
        logits = pyro.param("logits", torch.tensor(BRANCH["logits"]))
        with pyro.plate("data", 3):
            pyro.sample("z", dist.Bernoulli(logits=logits))

    elbo = TraceGO_ELBO()
    with pyro.validation_enabled(True):
        elbo.differentiable_loss(model, guide)
    assert elbo.last_num_evaluations == 2
