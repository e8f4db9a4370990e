"""Parity with ``TraceGraph_ELBO``: for each model/guide pair of the table, Pyro's
``TraceGraph_ELBO`` runs, ``TraceGO_ELBO`` runs too, takes the expected path (pathwise,
CDF rule, discrete GO rule, or the score-function fallback with one warning naming the
site), and its gradient is unbiased against an exact one (closed-form KL, quadrature or
enumeration)."""

import itertools
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
import torch.distributions as tdist
from conftest import assert_unbiased, exact_gradient, gradient_samples
from pyro.distributions import constraints
from pyro.distributions.testing import fakes
from pyro.infer import TraceGraph_ELBO
from shared_cases import COUNT
from test_unbiased import (
    _count_case,
    _double,
    _truncated_neg_elbo,
    bernoulli_exact_neg_elbo,
    bernoulli_guide,
    bernoulli_model,
    categorical_exact_neg_elbo,
    categorical_guide,
    categorical_model,
    hierarchical_exact_neg_elbo,
    hierarchical_model,
)
from torch.distributions import kl_divergence

from pyro_go import TraceGO_ELBO, get_go_rule, go_surrogate
from pyro_go.ops.provenance import strip
from pyro_go.poutine import GOSampleMessenger


@dataclass
class Case:
    """One row: ``exact`` is the exact negative ELBO as a function of the params;
    ``path`` is ``"pathwise"``, ``"cdf"``, ``"discrete"`` or ``"score"``.  Averaging
    vectorised particles makes a sample cheap (the mean is unchanged)."""

    model: Callable
    guide: Callable
    names: list[str]
    exact: Callable
    path: str
    site: str = "z"
    #: gradient samples, each the average of ``particles`` vectorised particles
    num_samples: int = 200
    particles: int = 20
    options: dict = field(default_factory=dict)
    #: costly rows (also checked by test_unbiased.py, or many replays): ``-m slow``
    slow: bool = False


# ------------------------------------------------------------ guide distributions


class SampleOnlyGamma(dist.Gamma):
    """A Gamma with ``sample`` but no ``rsample``: its cdf (``igamma``) has no derivative
    in the concentration, so the CDF rule works only where that is not trained."""

    has_rsample = False

    def rsample(self, sample_shape=()):
        raise NotImplementedError

    def sample(self, sample_shape=()):
        with torch.no_grad():
            return dist.Gamma.rsample(self, sample_shape)


class NonreparameterizedExponential(dist.Exponential):
    has_rsample = False


class SampleOnlyNormal(dist.Normal):
    """A continuous class with neither ``rsample`` nor ``cdf``."""

    has_rsample = False
    cdf = tdist.Distribution.cdf


def _param(name, value, constraint=constraints.real):
    return pyro.param(name, torch.tensor(value), constraint=constraint)


_POSITIVE = constraints.positive


# ------------------------------------------------------------ single continuous sites


def kl_case(make_guide_fn, target, names, path, exact_fn=None, **options):
    """A guide site ``z`` against a model prior ``target``: the negative ELBO is
    ``KL(q || target)`` (closed form, or ``exact_fn(q)``)."""

    def model():
        pyro.sample("z", target)

    def guide():
        pyro.sample("z", make_guide_fn())

    def exact():
        q = make_guide_fn()
        return exact_fn(q) if exact_fn else kl_divergence(q, target).sum()

    return Case(model, guide, names, exact, path, **options)


def gamma(cls=dist.Gamma, flag=True):
    def make():
        fn = cls(_param("a", 2.0, _POSITIVE), _param("b", 1.5, _POSITIVE))
        return fn.has_rsample_(False) if flag else fn

    return make


def beta(cls=dist.Beta, flag=True):
    def make():
        fn = cls(_param("a", 1.5, _POSITIVE), _param("b", 2.0, _POSITIVE))
        return fn.has_rsample_(False) if flag else fn

    return make


def dirichlet(cls=dist.Dirichlet, flag=True):
    def make():
        fn = cls(_param("c", [1.5, 0.7, 2.0], _POSITIVE))
        return fn.has_rsample_(False) if flag else fn

    return make


def shape_fixed_gamma():
    return SampleOnlyGamma(torch.tensor(2.0), _param("b", 1.5, _POSITIVE))


def von_mises():
    return dist.VonMises(_param("loc", 0.3), _param("k", 1.5, _POSITIVE))


VON_MISES_TARGET = dist.VonMises(torch.tensor(-0.5), torch.tensor(2.0))


def von_mises_kl(q):
    """``KL(q || target)`` by the trapezoid rule on the circle."""
    angle = torch.linspace(-math.pi, math.pi, 4001, dtype=torch.float64)
    q64 = dist.VonMises(q.loc.double(), q.concentration.double())
    target = dist.VonMises(VON_MISES_TARGET.loc.double(), VON_MISES_TARGET.concentration.double())
    log_q = q64.log_prob(angle)
    return torch.trapezoid(log_q.exp() * (log_q - target.log_prob(angle)), angle).float()


# ---------------------------------------------------------- sites without a GO rule

EMPIRICAL_SAMPLES = torch.tensor([-1.0, 0.5, 2.0])
X = torch.tensor(1.0)


def empirical_model():
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    pyro.sample("x", dist.Normal(z, 1.0), obs=X)


def empirical_guide():
    pyro.sample("z", dist.Empirical(EMPIRICAL_SAMPLES, _param("w", [0.2, -0.3, 0.1])))


def empirical_exact():
    log_q = torch.log_softmax(pyro.param("w"), -1)
    log_p = dist.Normal(0.0, 1.0).log_prob(EMPIRICAL_SAMPLES)
    log_p = log_p + dist.Normal(EMPIRICAL_SAMPLES, 1.0).log_prob(X)
    return -(log_q.exp() * (log_p - log_q)).sum()


MULTINOMIAL_PRIOR = torch.tensor([0.2, 0.3, 0.5])
MULTINOMIAL_WEIGHTS = torch.tensor([1.0, -0.5, 0.3])


def multinomial_model():
    z = pyro.sample("z", dist.Multinomial(3, MULTINOMIAL_PRIOR))
    pyro.sample("x", dist.Normal((z * MULTINOMIAL_WEIGHTS).sum(-1), 1.0), obs=X)


def multinomial_guide():
    pyro.sample("z", dist.Multinomial(3, logits=_param("w", [0.1, -0.2, 0.3])))


def multinomial_exact():
    q = dist.Multinomial(3, logits=pyro.param("w"))
    total = 0.0
    for counts in itertools.product(range(4), repeat=3):
        if sum(counts) != 3:
            continue
        z = torch.tensor(counts, dtype=torch.float)
        log_q = q.log_prob(z)
        log_p = dist.Multinomial(3, MULTINOMIAL_PRIOR).log_prob(z)
        log_p = log_p + dist.Normal((z * MULTINOMIAL_WEIGHTS).sum(), 1.0).log_prob(X)
        total = total + log_q.exp() * (log_p - log_q)
    return -total


# A score-function site with a pathwise child in the guide, in a plate:
# z ~ N(0, 1), w ~ N(z, 1), x ~ N(w, 1) observed; q(z) no rule, q(w | z) = N(c z, 1).
CHAIN_X = torch.tensor([1.0, -0.5])


def chain_model():
    with pyro.plate("pair", 2):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        w = pyro.sample("w", dist.Normal(z, 1.0))
        pyro.sample("x", dist.Normal(w, 1.0), obs=CHAIN_X)


def chain_guide():
    loc, scale = _param("m", [0.3, -0.2]), _param("s", [0.8, 1.2], _POSITIVE)
    c = _param("c", 0.7)
    with pyro.plate("pair", 2):
        z = pyro.sample("z", SampleOnlyNormal(loc, scale))
        pyro.sample("w", dist.Normal(c * z, 1.0))


def chain_exact():
    """Gaussian expectations per slice: three unit-variance terms in ``p``, two in ``q``."""
    m, s, c = pyro.param("m"), pyro.param("s"), pyro.param("c")
    second = m**2 + s**2  # E[z²]
    squares = second + (c - 1) ** 2 * second + 1 + (CHAIN_X - c * m) ** 2 + c**2 * s**2 + 1
    elbo = -0.5 * math.log(2 * math.pi) - 0.5 * squares + s.log() + 1.0
    return -elbo.sum()


def score_then_go_guide():
    a, b, c = (_param(k, v, _POSITIVE) for k, v in (("a", 2.0), ("b", 1.5), ("c", 1.2)))
    lam = pyro.sample("lam", SampleOnlyGamma(a, b))
    pyro.sample("n", dist.Poisson(c * lam))


# ------------------------------------------------------------ discrete GO rules


def count_case(name):
    """A count site (the rows of ``shared_cases.COUNT``), one particle per sample where
    particles do not pay: the negative binomials' ``total_count`` nabla, and Poisson
    against Poisson, whose GO gradient has no variance (``D f = log(5/3)``), so that only
    the float32 rounding of an average of particles would be measured."""
    make_guide_fn, make_model_fn, names = _count_case(name)
    single = COUNT[name]["family"] in ("negative-binomial", "poisson")
    return Case(
        lambda: pyro.sample("z", make_model_fn()),
        lambda: pyro.sample("z", make_guide_fn()),
        names,
        lambda: _truncated_neg_elbo(_double(make_guide_fn()), _double(make_model_fn())),
        "discrete",
        num_samples=2000 if single else 200,
        particles=1 if single else 20,
        slow=COUNT[name]["family"] == "negative-binomial",
    )


def categorical_case(one_hot, form):
    return Case(
        lambda: categorical_model(one_hot),
        lambda: categorical_guide(one_hot),
        ["cat_logits"],
        categorical_exact_neg_elbo,
        "discrete",
        site="y",
        options={"categorical_form": form},
        slow=one_hot or form == "raw",
    )


GAMMA_TARGET = dist.Gamma(torch.tensor(1.0), torch.tensor(0.5))
BETA_TARGET = dist.Beta(torch.tensor(3.0), torch.tensor(1.5))
DIRICHLET_TARGET = dist.Dirichlet(torch.tensor([1.0, 2.0, 3.0]))
NORMAL_TARGET = dist.Normal(torch.tensor(1.0), torch.tensor(2.0))


def normal(cls):
    def make():
        return cls(_param("loc", 0.0), _param("scale", 1.0, _POSITIVE))

    return make


def normal_kl(q):
    return kl_divergence(dist.Normal(q.loc, q.scale), NORMAL_TARGET)


CASES = {
    # implicit reparameterisation although the site is marked non-reparameterised
    "gamma-has_rsample_(False)": kl_case(gamma(), GAMMA_TARGET, ["a", "b"], "pathwise"),
    "gamma-fake": kl_case(
        gamma(fakes.NonreparameterizedGamma, False), GAMMA_TARGET, ["a", "b"], "pathwise"
    ),
    "beta-has_rsample_(False)": kl_case(beta(), BETA_TARGET, ["a", "b"], "pathwise"),
    "beta-fake": kl_case(
        beta(fakes.NonreparameterizedBeta, False), BETA_TARGET, ["a", "b"], "pathwise"
    ),
    "dirichlet-has_rsample_(False)": kl_case(dirichlet(), DIRICHLET_TARGET, ["c"], "pathwise"),
    "dirichlet-fake": kl_case(
        dirichlet(fakes.NonreparameterizedDirichlet, False), DIRICHLET_TARGET, ["c"], "pathwise"
    ),
    # the CDF rule, where the cdf is differentiable in every trained parameter
    "normal-cdf": kl_case(
        normal(fakes.NonreparameterizedNormal), NORMAL_TARGET, ["loc", "scale"], "cdf", normal_kl
    ),
    "exponential-cdf": kl_case(
        lambda: NonreparameterizedExponential(_param("rate", 0.7, _POSITIVE)),
        GAMMA_TARGET,
        ["rate"],
        "cdf",
        lambda q: kl_divergence(dist.Exponential(q.rate), GAMMA_TARGET),
    ),
    "gamma-cdf-rate-only": kl_case(shape_fixed_gamma, GAMMA_TARGET, ["b"], "cdf"),
    # score function: a cdf with no derivative in a trained parameter, no cdf at all,
    # Empirical, a discrete family without a rule, a rule-less site with guide children
    "gamma-cdf-not-differentiable": kl_case(
        gamma(SampleOnlyGamma, False), GAMMA_TARGET, ["a", "b"], "score"
    ),
    "normal-no-rsample-no-cdf": kl_case(
        normal(SampleOnlyNormal), NORMAL_TARGET, ["loc", "scale"], "score", normal_kl
    ),
    "von-mises": kl_case(von_mises, VON_MISES_TARGET, ["loc", "k"], "score", von_mises_kl),
    # Empirical does not batch: one particle per sample
    "empirical": Case(
        empirical_model,
        empirical_guide,
        ["w"],
        empirical_exact,
        "score",
        num_samples=2000,
        particles=1,
    ),
    "multinomial": Case(multinomial_model, multinomial_guide, ["w"], multinomial_exact, "score"),
    "score-site-with-guide-child-in-plate": Case(
        chain_model, chain_guide, ["m", "s", "c"], chain_exact, "score"
    ),
    "score-site-above-discrete-leaf": Case(
        hierarchical_model,
        score_then_go_guide,
        ["a", "b", "c"],
        hierarchical_exact_neg_elbo,
        "score",
        site="lam",
        num_samples=3000,
        particles=1,
        slow=True,
    ),
    # the discrete GO rules
    "bernoulli": Case(
        bernoulli_model,
        bernoulli_guide,
        ["logits", "prior_logits"],
        bernoulli_exact_neg_elbo,
        "discrete",
        slow=True,
    ),
    "categorical-local": categorical_case(False, "local"),
    "categorical-raw": categorical_case(False, "raw"),
    "one-hot-categorical": categorical_case(True, "local"),
    **{name: count_case(name) for name in COUNT},
}


RULE_KIND = {"pathwise": "reparameterized", "cdf": "cdf", "discrete": "discrete"}


def z_scores(samples, exact):
    """``|mean − exact| / stderr`` per coordinate (reported by ``pytest -s``)."""
    stderr = samples.std(0) / samples.shape[0] ** 0.5
    return ((samples.mean(0) - exact).abs() / stderr).tolist()


def assert_path(case):
    """The sampler takes the path the table names for the case's site."""
    sampler = GOSampleMessenger(case.options.get("categorical_form", "local"))
    site = poutine.trace(sampler(case.guide)).get_trace().nodes[case.site]
    if case.path == "score":
        assert list(sampler.score_function_sites) == [case.site]
        return
    assert not sampler.score_function_sites
    form = case.options.get("categorical_form", "local")
    assert get_go_rule(site["fn"], form).kind == RULE_KIND[case.path]
    assert strip(site["value"]).requires_grad == (case.path != "discrete")


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if c.slow else n for n, c in CASES.items()],
)
def test_parity_with_tracegraph(name):
    case = CASES[name]
    case.guide()
    case.model()  # creates the model's params
    params = [pyro.param(n).unconstrained() for n in case.names]
    exact = exact_gradient(case.exact(), params)
    TraceGraph_ELBO().loss_and_grads(case.model, case.guide)  # the reference trains it
    assert_path(case)
    elbo = TraceGO_ELBO(
        num_particles=case.particles,
        vectorize_particles=case.particles > 1,
        max_plate_nesting=1,
        **case.options,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        samples = gradient_samples(elbo, case.model, case.guide, params, case.num_samples)
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
        TraceGO_ELBO(strict=True).differentiable_loss(case.model, case.guide)


# ------------------------------------------------- asking for the score function


def control_flow_model():
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    pyro.sample("x", dist.Normal(torch.where(z > 0, 1.0, -1.0), 1.0), obs=X)


def control_flow_guide():
    loc = _param("m", 0.3)
    pyro.sample("z", dist.Normal(loc, 1.0), infer={"go_score_function": True})


def control_flow_exact():
    loc = pyro.param("m")
    below = dist.Normal(loc, 1.0).cdf(torch.tensor(0.0))  # P(z < 0)
    log_likelihood = (1 - below) * dist.Normal(1.0, 1.0).log_prob(X)
    log_likelihood = log_likelihood + below * dist.Normal(-1.0, 1.0).log_prob(X)
    return 0.5 * loc**2 - log_likelihood  # KL(N(m, 1) || N(0, 1)) − E[log p(x | z)]


def test_score_function_on_request_for_control_flow():
    """A value that decides control flow has no pathwise (or GO) gradient through the
    jump; ``infer={"go_score_function": True}`` gives it the score function, without a
    warning, also under ``strict=True``."""
    control_flow_guide()
    params = [pyro.param("m").unconstrained()]
    exact = exact_gradient(control_flow_exact(), params)
    elbo = TraceGO_ELBO(
        num_particles=20, vectorize_particles=True, max_plate_nesting=0, strict=True
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        samples = gradient_samples(elbo, control_flow_model, control_flow_guide, params, 200)
    print(f"\ncontrol flow: z = {z_scores(samples, exact)}")
    assert_unbiased(samples, exact)


def test_go_surrogate_checks_the_cdf():
    """``go_surrogate`` uses the CDF rule where the cdf is differentiable in the
    trained parameters and names the problem where it is not."""
    rate = torch.tensor(1.5, requires_grad=True)
    (grad,) = torch.autograd.grad(go_surrogate(SampleOnlyGamma(2.0, rate), lambda v: v), rate)
    assert torch.isfinite(grad)
    concentration = torch.tensor(2.0, requires_grad=True)
    with pytest.raises(ValueError, match="SampleOnlyGamma has no GO gradient.*igamma"):
        go_surrogate(SampleOnlyGamma(concentration, rate), lambda v: v)
