"""Count sums at bounded cost, NumPyro backend: the negative binomial's ``g_r`` at counts
of 1e6 and means of 1e10 against float64 / 30-digit references, shapes that do not grow
with the counts under ``jit``, and an error naming the site where a generic sum is out of
reach (eagerly, and from the jitted step)."""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from count_references import MEAN_1E10, nb_nabla_log_space_sum, nb_nabla_mpmath
from scipy.special import digamma

from numpyro_go import TraceGO_ELBO
from numpyro_go.distributions import get_go_rule
from numpyro_go.distributions import rules as go_rules
from numpyro_go.ops.quadrature_nodes import EXACT_HEAD_COUNTS
from numpyro_go.ops.special import (
    COUNT_SUM_CAP,
    CountSumOutOfReach,
    negative_binomial_total_count_nabla,
)

nabla_jit = jax.jit(negative_binomial_total_count_nabla)


@pytest.fixture(autouse=True)
def float64():
    with jax.enable_x64(True):
        yield


def nabla(y, r, p):
    return float(nabla_jit(jnp.float64(y), jnp.float64(r), jnp.float64(p)))


@pytest.mark.parametrize(
    "r, p, y",
    [
        (5.0, MEAN_1E10, 2e9),
        (5.0, MEAN_1E10, 1e10),
        (5.0, MEAN_1E10, 3e10),
        (0.5, 1 - 1e-6, 1e6),
        (1e6, 0.5, 1e6),
        (1e-3, 0.999, 1e6),
        (0.01, 0.2, 100),
    ],
)
def test_negative_binomial_large_counts_against_mpmath(r, p, y):
    assert nabla(y, r, p) == pytest.approx(nb_nabla_mpmath(y, r, p), rel=1e-9)


def test_negative_binomial_count_1e6_against_log_space_sum():
    r, p, y = 2.5, 1e6 / (1e6 + 2.5), 500000
    assert nabla(y, r, p) == pytest.approx(nb_nabla_log_space_sum(y, r, p), rel=1e-7)


def test_gamma_poisson_mean_1e10():
    """``GammaPoisson(α, β)`` with ``β = 5e-10``: ``1 − p = β/(1 + β)`` enters exactly."""
    fn = dist.GammaPoisson(jnp.float64(5.0), jnp.float64(5e-10))
    got = float(get_go_rule(fn).variable_nabla(fn, jnp.float64(8e9))["concentration"])
    want = nb_nabla_mpmath(8e9, 5.0, 1 / (1 + 5e-10), complement=5e-10 / (1 + 5e-10))
    assert got == pytest.approx(want, rel=1e-9)


def grid_head_sum(y, r, p):
    """The previous sum over ``k = 0..y``, in numpy."""
    from scipy.special import gammaln

    k = np.arange(y + 1, dtype=np.float64)
    log_q = gammaln(k + r) - gammaln(k + 1) + k * np.log(p)
    weights = np.exp(log_q - log_q[-1])
    return -np.sum(weights * (digamma(k + r) - digamma(r) + np.log1p(-p)))


@pytest.mark.parametrize("r, p", [(2.0, 0.6), (10.0, 0.5), (5.0, 0.999)])
def test_small_counts_keep_the_grid_sum(r, p):
    ys = [y for y in range(EXACT_HEAD_COUNTS + 1) if np.log1p(-p) < digamma(r) - digamma(r + y + 1)]
    assert len(ys) >= 2
    got = nabla_jit(jnp.asarray(ys, jnp.float64), jnp.float64(r), jnp.float64(p))
    want = [grid_head_sum(y, r, p) for y in ys]
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-11)


def largest_array(jaxpr) -> int:
    """The most elements of any value in a jaxpr, sub-jaxprs (loop bodies) included."""
    sizes = [int(np.prod(v.aval.shape)) for v in jaxpr.invars + jaxpr.outvars]
    for eqn in jaxpr.eqns:
        sizes += [int(np.prod(v.aval.shape)) for v in eqn.outvars]
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            sizes.append(largest_array(sub))
    return max(sizes)


def test_negative_binomial_cost_ignores_other_counts():
    """One draw of mean 1e10 among 999 small ones: under ``jit`` no array is larger than
    a few copies of the batch, and each element's nabla is the one it gets alone."""
    small = jnp.arange(999.0) % 17  # small counts, both sides of the mean of 2
    y = jnp.concatenate([small, jnp.array([1e10])])
    r = jnp.concatenate([jnp.full(999, 3.0), jnp.array([5.0])])
    p = jnp.concatenate([jnp.full(999, 0.4), jnp.array([MEAN_1E10])])
    jaxpr = jax.make_jaxpr(negative_binomial_total_count_nabla)(y, r, p).jaxpr
    assert largest_array(jaxpr) <= 1000
    got = nabla_jit(y, r, p)
    alone = [nabla_jit(y[i], r[i], p[i]) for i in (0, 1, 2, 999)]
    np.testing.assert_allclose(np.asarray(got[jnp.array([0, 1, 2, 999])]), alone, rtol=1e-13)


def zip_site(rate, gate):
    return dist.ZeroInflatedPoisson(gate=gate, rate=rate)


def test_generic_rule_cost_ignores_other_counts():
    """A ZeroInflatedPoisson batch with one count far in the tail: each step of the loop
    works on one value per element; the large count ends in a few steps."""
    fn = zip_site(jnp.full(1000, 3.0), 0.2)
    y = (jnp.arange(1000.0) % 9).at[-1].set(1e6)
    rule = get_go_rule(fn)
    assert isinstance(rule, go_rules.GenericCountRule)
    jaxpr = jax.make_jaxpr(lambda v: rule.variable_nabla(fn, v))(y).jaxpr
    assert largest_array(jaxpr) <= 1000
    nablas = jax.jit(lambda v: rule.variable_nabla(fn, v))(y)
    assert all(bool(jnp.isfinite(g).all()) for g in nablas.values())


def test_generic_rule_matches_negative_binomial_closed_form():
    """The generic steps (head or tail, whichever ends) against the closed form, at
    counts below and above the mean of 796."""
    y = jnp.array([2.0, 40.0, 700.0, 3000.0])
    fn = dist.NegativeBinomialProbs(jnp.full(4, 4.0), jnp.full(4, 0.995))
    generic = jax.jit(lambda v: go_rules.GenericCountRule().variable_nabla(fn, v))(y)
    closed = go_rules.GammaPoissonRule().variable_nabla(fn, y)["concentration"]
    # the generic rule names the pytree's leaves; one of them is the concentration r.
    # NumPyro's GammaPoisson.log_prob itself is off by ~1e-6 here (betaln): rtol=1e-6
    assert any(np.allclose(g, closed, rtol=1e-6, atol=0) for g in generic.values())


def out_of_reach_model():
    numpyro.sample("z", dist.Poisson(1e8))


def out_of_reach_guide():
    rate = numpyro.param("rate", 1e8)
    numpyro.sample("z", zip_site(rate, 1e-300))


def out_of_reach_loss(params):
    key = jax.random.PRNGKey(0)
    return TraceGO_ELBO().loss(key, params, out_of_reach_model, out_of_reach_guide)


def test_generic_rule_out_of_reach_names_the_site():
    """A count of ~1e8 with sd 1e4: the head needs 1e8 terms and the tail ~1e5."""
    with pytest.raises(CountSumOutOfReach, match="TraceGO_ELBO: guide site 'z'") as error:
        out_of_reach_loss({"rate": jnp.float64(1e8)})
    assert f"more than {COUNT_SUM_CAP} terms" in str(error.value)


def test_generic_rule_out_of_reach_names_the_site_under_jit():
    """Under ``jit`` the counts are not known when the step is traced: the error comes
    from a host callback when it runs, still naming the site."""
    step = jax.jit(jax.grad(out_of_reach_loss))
    with pytest.raises(Exception, match="TraceGO_ELBO: guide site 'z'"):
        jax.block_until_ready(step({"rate": jnp.float64(1e8)}))
