"""Parity with ``numpyro.infer.TraceGraph_ELBO`` (the twin of
``tests/pyro/test_parity.py``): for each model/guide pair of the table, NumPyro's
``TraceGraph_ELBO`` runs, ``TraceGO_ELBO`` runs too, takes the expected path (pathwise,
CDF rule, discrete GO rule, or the score-function fallback with one warning naming the
site), and its gradient is unbiased against an exact one (closed-form KL, quadrature or
enumeration).  NumPyro marks a site non-reparameterised by the class's
``reparametrized_params`` (``has_rsample`` is whether they cover every parameter)."""

import itertools
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from jax.scipy.special import gammaln
from jax_helpers import exact_gradient, gradient_samples
from numpyro.distributions import constraints
from numpyro.distributions.kl import kl_divergence
from numpyro.handlers import seed, substitute, trace
from numpyro.infer import TraceGraph_ELBO
from shared_cases import CATEGORICAL, COUNT
from test_numpyro_unbiased import (
    BERNOULLI_PARAMS,
    _trained,
    bernoulli_exact_neg_elbo,
    bernoulli_guide,
    bernoulli_model,
    categorical_exact_neg_elbo,
    categorical_guide,
    categorical_model,
    count_distribution,
    hierarchical_exact_neg_elbo,
    hierarchical_model,
    truncated_neg_elbo,
)
from unbiasedness import assert_unbiased

from numpyro_go import TraceGO_ELBO, get_go_rule, go_surrogate
from numpyro_go.handlers import go_sample


@dataclass
class Case:
    """One row: ``exact(params)`` is the exact negative ELBO; ``path`` is
    ``"pathwise"``, ``"cdf"``, ``"discrete"`` or ``"score"``."""

    model: Callable
    guide: Callable
    params: dict
    exact: Callable
    path: str
    site: str = "z"
    num_samples: int = 3000
    options: dict = field(default_factory=dict)
    #: costly rows (the discrete ones are checked by test_numpyro_unbiased.py too, and
    #: each row compiles its own estimator): ``-m slow``
    slow: bool = False


# ------------------------------------------------------------ guide distributions


class NonreparameterizedGamma(dist.Gamma):
    reparametrized_params = []


class NonreparameterizedBeta(dist.Beta):
    reparametrized_params = []


class NonreparameterizedDirichlet(dist.Dirichlet):
    reparametrized_params = []


class NonreparameterizedNormal(dist.Normal):
    reparametrized_params = []


class NonreparameterizedExponential(dist.Exponential):
    reparametrized_params = []


class SampleOnlyBeta(dist.Beta):
    """A Beta with its own sampler and no declared reparameterisation: its cdf
    (``betainc``) has no derivative in the concentrations."""

    reparametrized_params = []

    def sample(self, key, sample_shape=()):
        shape = sample_shape + self.batch_shape
        return jax.random.beta(key, self.concentration1, self.concentration0, shape)


class SampleOnlyNormal(dist.Normal):
    """A continuous class with neither a pathwise sampler nor a ``cdf``."""

    reparametrized_params = []
    cdf = dist.Distribution.cdf


class SampleOnlyGamma(dist.Gamma):
    """A Gamma with its own sampler and no ``cdf``."""

    reparametrized_params = []
    cdf = dist.Distribution.cdf

    def sample(self, key, sample_shape=()):
        shape = sample_shape + self.batch_shape
        return jax.random.gamma(key, self.concentration, shape) / self.rate


POSITIVE = constraints.positive


# ------------------------------------------------------------ single continuous sites


def kl_case(make, target, params, path, exact=None, **options):
    """A guide site ``z`` (``make(params)``) against a model prior ``target``: the
    negative ELBO is ``KL(q || target)`` (closed form, or ``exact(params)``)."""
    constrained = {n: POSITIVE for n in params if n not in ("loc",)}

    def model():
        numpyro.sample("z", target)

    def guide():
        values = {
            n: numpyro.param(n, v, constraint=constrained.get(n, constraints.real))
            for n, v in params.items()
        }
        numpyro.sample("z", make(values))

    def kl(p):
        return jnp.sum(kl_divergence(make(p), target))

    return Case(model, guide, params, exact or kl, path, **options)


def _params(**values):
    return {name: jnp.asarray(value) for name, value in values.items()}


GAMMA_TARGET = dist.Gamma(1.0, 0.5)
BETA_TARGET = dist.Beta(3.0, 1.5)
DIRICHLET_TARGET = dist.Dirichlet(jnp.array([1.0, 2.0, 3.0]))
NORMAL_TARGET = dist.Normal(1.0, 2.0)
VON_MISES_TARGET = dist.VonMises(-0.5, 2.0)


def gamma(cls):
    return lambda p: cls(p["a"], p["b"])


def beta(cls):
    return lambda p: cls(p["a"], p["b"])


def normal(cls):
    return lambda p: cls(p["loc"], p["scale"])


def normal_kl(p):
    return kl_divergence(dist.Normal(p["loc"], p["scale"]), NORMAL_TARGET)


def exponential_gamma_kl(p):
    """``KL(Exponential(λ) || Gamma(α, β))`` in closed form."""
    rate, alpha, beta_ = p["rate"], GAMMA_TARGET.concentration, GAMMA_TARGET.rate
    expected_log = -jnp.euler_gamma - jnp.log(rate)
    log_target = alpha * jnp.log(beta_) - gammaln(alpha) + (alpha - 1) * expected_log
    return -(1 - jnp.log(rate)) - (log_target - beta_ / rate)


def von_mises_kl(p):
    """``KL(q || target)`` by the trapezoid rule on the circle."""
    angle = jnp.linspace(-jnp.pi, jnp.pi, 4001)
    log_q = dist.VonMises(p["loc"], p["k"]).log_prob(angle)
    integrand = jnp.exp(log_q) * (log_q - VON_MISES_TARGET.log_prob(angle))
    return jnp.trapezoid(integrand, angle)


# ---------------------------------------------------------- sites without a GO rule

MULTINOMIAL_PRIOR = jnp.array([0.2, 0.3, 0.5])
MULTINOMIAL_WEIGHTS = jnp.array([1.0, -0.5, 0.3])
X = 1.0


def multinomial_model():
    z = numpyro.sample("z", dist.Multinomial(3, MULTINOMIAL_PRIOR))
    numpyro.sample("x", dist.Normal(jnp.sum(z * MULTINOMIAL_WEIGHTS, -1), 1.0), obs=X)


def multinomial_guide():
    logits = numpyro.param("w", jnp.array([0.1, -0.2, 0.3]))
    numpyro.sample("z", dist.Multinomial(3, logits=logits))


def multinomial_exact(params):
    total = 0.0
    for counts in itertools.product(range(4), repeat=3):
        if sum(counts) != 3:
            continue
        z = jnp.array(counts, dtype=float)
        log_q = dist.Multinomial(3, logits=params["w"]).log_prob(z)
        log_p = dist.Multinomial(3, MULTINOMIAL_PRIOR).log_prob(z)
        log_p = log_p + dist.Normal(jnp.sum(z * MULTINOMIAL_WEIGHTS), 1.0).log_prob(X)
        total = total + jnp.exp(log_q) * (log_p - log_q)
    return -total


# A score-function site with a pathwise child in the guide, in a plate:
# z ~ N(0, 1), w ~ N(z, 1), x ~ N(w, 1) observed; q(z) no rule, q(w | z) = N(c z, 1).
CHAIN_X = jnp.array([1.0, -0.5])


def chain_model():
    with numpyro.plate("pair", 2):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        w = numpyro.sample("w", dist.Normal(z, 1.0))
        numpyro.sample("x", dist.Normal(w, 1.0), obs=CHAIN_X)


def chain_guide():
    loc = numpyro.param("m", jnp.array([0.3, -0.2]))
    scale = numpyro.param("s", jnp.array([0.8, 1.2]), constraint=POSITIVE)
    c = numpyro.param("c", jnp.array(0.7))
    with numpyro.plate("pair", 2):
        z = numpyro.sample("z", SampleOnlyNormal(loc, scale))
        numpyro.sample("w", dist.Normal(c * z, 1.0))


def chain_exact(params):
    """Gaussian expectations per slice: three unit-variance terms in ``p``, two in ``q``."""
    m, s, c = params["m"], params["s"], params["c"]
    second = m**2 + s**2  # E[z²]
    squares = second + (c - 1) ** 2 * second + 1 + (CHAIN_X - c * m) ** 2 + c**2 * s**2 + 1
    elbo = -0.5 * jnp.log(2 * jnp.pi) - 0.5 * squares + jnp.log(s) + 1.0
    return -jnp.sum(elbo)


def score_then_go_guide():
    a, b, c = (
        numpyro.param(k, v, constraint=POSITIVE)
        for k, v in zip("abc", (2.0, 1.5, 1.2), strict=True)
    )
    lam = numpyro.sample("lam", SampleOnlyGamma(a, b))
    numpyro.sample("n", dist.Poisson(c * lam))


# ------------------------------------------------------------ discrete GO rules


def count_case(name):
    spec = COUNT[name]
    family = spec["family"]
    top = int(spec["guide"]["total_count"]) + 1 if family == "binomial" else 1500

    def guide_fn(params):
        return count_distribution(family, dict(spec["guide"], **params))

    def guide():
        values = {n: numpyro.param(n, v) for n, v in _trained(spec).items()}
        numpyro.sample("z", guide_fn(values))

    return Case(
        lambda: numpyro.sample("z", count_distribution(family, spec["model"])),
        guide,
        _trained(spec),
        lambda p: truncated_neg_elbo(guide_fn(p), count_distribution(family, spec["model"]), top),
        "discrete",
        slow=True,
    )


def categorical_case(form):
    return Case(
        categorical_model,
        categorical_guide,
        {"cat_logits": jnp.array(CATEGORICAL["logits"])},
        categorical_exact_neg_elbo,
        "discrete",
        site="y",
        options={"categorical_form": form},
        slow=True,
    )


CASES = {
    # implicit reparameterisation although the class declares no reparametrized_params
    "gamma-nonreparameterized": kl_case(
        gamma(NonreparameterizedGamma),
        GAMMA_TARGET,
        _params(a=2.0, b=1.5),
        "pathwise",
        num_samples=1000,
    ),
    "beta-nonreparameterized": kl_case(
        beta(NonreparameterizedBeta),
        BETA_TARGET,
        _params(a=1.5, b=2.0),
        "pathwise",
        num_samples=1000,
    ),
    "dirichlet-nonreparameterized": kl_case(
        lambda p: NonreparameterizedDirichlet(p["c"]),
        DIRICHLET_TARGET,
        _params(c=[1.5, 0.7, 2.0]),
        "pathwise",
        num_samples=1000,
    ),
    # the CDF rule, where the cdf is differentiable in every parameter
    "normal-cdf": kl_case(
        normal(NonreparameterizedNormal),
        NORMAL_TARGET,
        _params(loc=0.0, scale=1.0),
        "cdf",
        normal_kl,
    ),
    "exponential-cdf": kl_case(
        lambda p: NonreparameterizedExponential(p["rate"]),
        GAMMA_TARGET,
        _params(rate=0.7),
        "cdf",
        exponential_gamma_kl,
    ),
    # score function: a cdf with no derivative in a parameter, no cdf at all, a
    # discrete family without a rule, rule-less sites with guide children
    "beta-cdf-not-differentiable": kl_case(
        beta(SampleOnlyBeta), BETA_TARGET, _params(a=1.5, b=2.0), "score", num_samples=6000
    ),
    "normal-no-sampler-no-cdf": kl_case(
        normal(SampleOnlyNormal),
        NORMAL_TARGET,
        _params(loc=0.0, scale=1.0),
        "score",
        normal_kl,
        num_samples=6000,
    ),
    "von-mises": kl_case(
        lambda p: dist.VonMises(p["loc"], p["k"]),
        VON_MISES_TARGET,
        _params(loc=0.3, k=1.5),
        "score",
        von_mises_kl,
        num_samples=6000,
    ),
    "multinomial": Case(
        multinomial_model,
        multinomial_guide,
        _params(w=[0.1, -0.2, 0.3]),
        multinomial_exact,
        "score",
        num_samples=6000,
    ),
    "score-site-with-guide-child-in-plate": Case(
        chain_model,
        chain_guide,
        _params(m=[0.3, -0.2], s=[0.8, 1.2], c=0.7),
        chain_exact,
        "score",
        num_samples=6000,
    ),
    "score-site-above-discrete-leaf": Case(
        hierarchical_model,
        score_then_go_guide,
        _params(a=2.0, b=1.5, c=1.2),
        hierarchical_exact_neg_elbo,
        "score",
        site="lam",
        num_samples=8000,
        slow=True,
    ),
    # the discrete GO rules
    "bernoulli": Case(
        bernoulli_model,
        bernoulli_guide,
        BERNOULLI_PARAMS,
        bernoulli_exact_neg_elbo,
        "discrete",
        slow=True,
    ),
    "categorical-local": categorical_case("local"),
    "categorical-raw": categorical_case("raw"),
    **{name: count_case(name) for name in COUNT},
}

RULE_KIND = {"pathwise": "reparameterized", "cdf": "cdf", "discrete": "discrete"}


def z_scores(samples, exact):
    """``|mean − exact| / stderr`` per coordinate (reported by ``pytest -s``)."""
    stderr = samples.std(0, ddof=1) / np.sqrt(samples.shape[0])
    return (np.abs(samples.mean(0) - exact) / stderr).tolist()


def assert_path(case):
    """The sampler takes the path the table names for the case's site."""
    form = case.options.get("categorical_form", "local")
    sampler = go_sample(categorical_form=form)
    with sampler:
        guide = seed(substitute(case.guide, data=case.params), 0)
        site = trace(guide).get_trace()[case.site]
    if case.path == "score":
        assert list(sampler.score_function_sites) == [case.site]
        return
    assert not sampler.score_function_sites
    assert get_go_rule(site["fn"], form).kind == RULE_KIND[case.path]


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if c.slow else n for n, c in CASES.items()],
)
def test_parity_with_tracegraph(name):
    case = CASES[name]
    exact = exact_gradient(case.exact, case.params)
    key = jax.random.PRNGKey(1)
    reference = jax.grad(lambda p: TraceGraph_ELBO().loss(key, p, case.model, case.guide))
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(reference(case.params)))
    assert_path(case)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        samples = gradient_samples(
            TraceGO_ELBO(**case.options), case.model, case.guide, case.params, case.num_samples
        )
    ours = [str(w.message) for w in caught if str(w.message).startswith("TraceGO_ELBO")]
    if case.path == "score":
        assert len(ours) == 1 and f"guide site '{case.site}'" in ours[0], ours
        assert "score-function estimator" in ours[0] and "strict=True" in ours[0]
    else:
        assert not ours, ours
    print(f"\n{name}: z = {z_scores(samples, exact)}")
    assert_unbiased(samples, exact)


@pytest.mark.parametrize("name", [n for n, case in CASES.items() if case.path == "score"])
def test_strict_raises_naming_the_site(name):
    case = CASES[name]
    with pytest.raises(ValueError, match=f"guide site '{case.site}'.*strict=False"):
        TraceGO_ELBO(strict=True).loss(jax.random.PRNGKey(0), case.params, case.model, case.guide)


# ------------------------------------------------- asking for the score function


def control_flow_model():
    z = numpyro.sample("z", dist.Normal(0.0, 1.0))
    numpyro.sample("x", dist.Normal(jnp.where(z > 0, 1.0, -1.0), 1.0), obs=X)


def control_flow_guide():
    loc = numpyro.param("m", 0.3)
    numpyro.sample("z", dist.Normal(loc, 1.0), infer={"go_score_function": True})


def control_flow_exact(params):
    below = dist.Normal(params["m"], 1.0).cdf(0.0)  # P(z < 0)
    log_likelihood = (1 - below) * dist.Normal(1.0, 1.0).log_prob(X)
    log_likelihood = log_likelihood + below * dist.Normal(-1.0, 1.0).log_prob(X)
    return 0.5 * params["m"] ** 2 - log_likelihood  # KL(N(m, 1) || N(0, 1)) − E[log p(x | z)]


def test_score_function_on_request_for_control_flow():
    """A value that decides control flow has no pathwise (or GO) gradient through the
    jump; ``infer={"go_score_function": True}`` gives it the score function, without a
    warning, also under ``strict=True``."""
    params = _params(m=0.3)
    exact = exact_gradient(control_flow_exact, params)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        samples = gradient_samples(
            TraceGO_ELBO(strict=True), control_flow_model, control_flow_guide, params, 4000
        )
    print(f"\ncontrol flow: z = {z_scores(samples, exact)}")
    assert_unbiased(samples, exact)


def test_go_surrogate_checks_the_cdf():
    """``go_surrogate`` names the problem where the cdf is not differentiable."""
    with pytest.raises(ValueError, match="SampleOnlyBeta has no GO gradient.*Betainc"):
        go_surrogate(SampleOnlyBeta(1.5, 2.0), lambda v: v, jax.random.PRNGKey(0))
