"""TraceRLOO_ELBO and TraceDisARM_ELBO: unbiasedness against exact gradients on the
shared problems, shared plate subsamples, and clear errors."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import assert_unbiased, exact_gradient, gradient_samples
from test_relax import mixed_exact_neg_elbo, mixed_guide, mixed_model
from test_unbiased import (
    _count_case,
    _double,
    _truncated_neg_elbo,
    bernoulli_exact_neg_elbo,
    bernoulli_guide,
    bernoulli_model,
    bernoulli_params,
    categorical_exact_neg_elbo,
    categorical_guide,
    categorical_model,
    hierarchical_exact_neg_elbo,
    hierarchical_guide,
    hierarchical_model,
    plated_exact_neg_elbo,
    plated_guide,
    plated_model,
)

from pyro_go import TraceDisARM_ELBO, TraceRLOO_ELBO

ESTIMATORS = {
    "rloo-2": lambda: TraceRLOO_ELBO(),
    "rloo-3-vectorized": lambda: TraceRLOO_ELBO(num_particles=3, vectorize_particles=True),
    "disarm": lambda: TraceDisARM_ELBO(),
    "disarm-vectorized": lambda: TraceDisARM_ELBO(vectorize_particles=True),
}
# each estimate replays guide and model K times in Python: the default suite runs one
# layout per estimator on each problem, the others are marked slow
FAST = {"bernoulli": ("rloo-3-vectorized", "disarm"), "plated": ("rloo-2", "disarm-vectorized")}


def _cases(problem):
    return [
        name if name in FAST[problem] else pytest.param(name, marks=pytest.mark.slow)
        for name in ESTIMATORS
    ]


@pytest.mark.parametrize("estimator", _cases("bernoulli"))
def test_coupled_bernoulli_vector(estimator):
    params = bernoulli_params()
    exact = exact_gradient(bernoulli_exact_neg_elbo(), params)
    samples = gradient_samples(
        ESTIMATORS[estimator](), bernoulli_model, bernoulli_guide, params, 800
    )
    assert_unbiased(samples, exact)


@pytest.mark.parametrize("estimator", _cases("plated"))
@pytest.mark.parametrize("subsample_size", [pytest.param(None, marks=pytest.mark.slow), 3])
def test_plated_local_latents(estimator, subsample_size):
    plated_guide(None)
    plated_model(None)
    params = [pyro.param("local_logits").unconstrained(), pyro.param("weights").unconstrained()]
    exact = exact_gradient(plated_exact_neg_elbo(), params)
    samples = gradient_samples(
        ESTIMATORS[estimator](), plated_model, plated_guide, params, 800, subsample_size
    )
    assert_unbiased(samples, exact)


@pytest.mark.parametrize("estimator", ["disarm", pytest.param("rloo-2", marks=pytest.mark.slow)])
def test_continuous_and_bernoulli_sites(estimator):
    mixed_guide()
    params = [pyro.param(name).unconstrained() for name in ("loc", "scale", "logit")]
    exact = exact_gradient(mixed_exact_neg_elbo(), params)
    samples = gradient_samples(ESTIMATORS[estimator](), mixed_model, mixed_guide, params, 1000)
    assert_unbiased(samples, exact)


# ----------------------------------------------------------- RLOO beyond Bernoulli


@pytest.mark.parametrize(
    "one_hot", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["categorical", "one-hot"]
)
def test_rloo_categorical(one_hot):
    categorical_guide(one_hot)
    params = [pyro.param("cat_logits").unconstrained()]
    exact = exact_gradient(categorical_exact_neg_elbo(), params)
    samples = gradient_samples(
        TraceRLOO_ELBO(),
        lambda: categorical_model(one_hot),
        lambda: categorical_guide(one_hot),
        params,
        800,
    )
    assert_unbiased(samples, exact)


@pytest.mark.parametrize(
    "case",
    [
        "poisson",
        pytest.param("binomial", marks=pytest.mark.slow),
        pytest.param("negative-binomial-10", marks=pytest.mark.slow),
    ],
)
def test_rloo_count_site(case):
    make_guide_fn, make_model_fn, names = _count_case(case)

    def model():
        pyro.sample("z", make_model_fn())

    def guide():
        pyro.sample("z", make_guide_fn())

    guide()
    params = [pyro.param(n).unconstrained() for n in names]
    exact = exact_gradient(
        _truncated_neg_elbo(_double(make_guide_fn()), _double(make_model_fn())), params
    )
    elbo = TraceRLOO_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=0)
    samples = gradient_samples(elbo, model, guide, params, 600)
    assert_unbiased(samples, exact)


@pytest.mark.slow
def test_rloo_continuous_parent_of_count():
    """Gamma → Poisson in the guide: the Poisson site's cost, and the pathwise Gamma."""
    hierarchical_guide()
    params = [pyro.param(k).unconstrained() for k in "abc"]
    exact = exact_gradient(hierarchical_exact_neg_elbo(), params)
    samples = gradient_samples(
        TraceRLOO_ELBO(num_particles=4), hierarchical_model, hierarchical_guide, params, 2000
    )
    assert_unbiased(samples, exact)


def test_rloo_weights_are_leave_one_out_per_slice():
    """Each sample's weight is its own cost minus the mean of the others, slice by slice,
    and the runs share the plate's subsample."""
    plated_guide(None)
    plated_model(None)
    elbo = TraceRLOO_ELBO(num_particles=3)
    runs = list(elbo._get_traces(plated_model, plated_guide, (3,), {}))
    indices = [run.traces.raw_guide_trace.nodes["data"]["value"] for run in runs]
    assert all(torch.equal(index, indices[0]) for index in indices)
    (site,) = elbo._score_sites(runs)
    assert site.cost.shape == (3, 3)
    for k, run in enumerate(runs):
        x_site = run.traces.model_trace.nodes["x"]
        z_guide = run.traces.guide_trace.nodes["z"]
        z_prior = run.traces.model_trace.nodes["z"]
        expected = x_site["log_prob"] + z_prior["log_prob"] - z_guide["log_prob"]
        assert torch.allclose(site.cost[k], expected.detach(), atol=1e-5)


# ----------------------------------------------------------------------- errors


def test_rloo_needs_two_samples():
    with pytest.raises(ValueError, match="num_particles >= 2"):
        TraceRLOO_ELBO(num_particles=1)


def test_disarm_refuses_categorical_site():
    categorical_guide(False)
    elbo = TraceDisARM_ELBO()
    with pytest.raises(ValueError, match="guide site 'y' has distribution Categorical"):
        elbo.differentiable_loss(lambda: categorical_model(False), lambda: categorical_guide(False))


def _continuous_parent_guide():
    loc = pyro.param("loc", torch.tensor(0.2))
    w = pyro.sample("w", dist.Normal(loc, 1.0))
    pyro.sample("z", dist.Bernoulli(logits=w))


def _continuous_parent_model():
    w = pyro.sample("w", dist.Normal(0.0, 1.0))
    z = pyro.sample("z", dist.Bernoulli(0.5))
    pyro.sample("x", dist.Normal(w + z, 1.0), obs=torch.tensor(0.5))


@pytest.mark.parametrize("vectorize", [False, True])
def test_disarm_refuses_logits_that_depend_on_samples(vectorize):
    elbo = TraceDisARM_ELBO(vectorize_particles=vectorize)
    with pytest.raises(ValueError, match="logits of guide site 'z' differ"):
        elbo.differentiable_loss(_continuous_parent_model, _continuous_parent_guide)


def test_disarm_refuses_discrete_parent():
    def guide():
        a = pyro.sample("a", dist.Bernoulli(0.3))
        pyro.sample("z", dist.Bernoulli(0.2 + 0.5 * a))

    def model():
        a = pyro.sample("a", dist.Bernoulli(0.5))
        pyro.sample("z", dist.Bernoulli(0.5))
        pyro.sample("x", dist.Normal(a, 1.0), obs=torch.tensor(0.0))

    with pytest.raises(ValueError, match=r"'z' depend on the discrete guide site\(s\) \['a'\]"):
        TraceDisARM_ELBO().differentiable_loss(model, guide)


def test_disarm_pair_is_antithetic():
    """The pair's noise is ``u`` and ``1 − u``: with ``σ(θ) = 0.5`` the two samples of
    every coordinate differ."""

    def guide():
        logits = pyro.param("l", torch.zeros(1000))
        pyro.sample("z", dist.Bernoulli(logits=logits).to_event(1))

    def model():
        pyro.sample("z", dist.Bernoulli(0.5).expand([1000]).to_event(1))

    for vectorize in (False, True):
        elbo = TraceDisARM_ELBO(vectorize_particles=vectorize)
        runs = list(elbo._get_traces(model, guide, (), {}))
        (site,) = elbo._score_sites(runs)
        assert torch.equal(site.value[0], 1 - site.value[1])
