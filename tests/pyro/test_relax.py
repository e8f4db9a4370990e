"""TraceRELAX_ELBO: unbiasedness of every control variate against exact gradients,
variance reduction by training the control variate, parameters in the param store,
and clear errors."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import assert_unbiased, exact_gradient, gradient_samples
from pyro.infer import SVI
from pyro.optim import Adam
from shared_cases import CATEGORICAL
from test_unbiased import (
    bernoulli_exact_neg_elbo,
    bernoulli_guide,
    bernoulli_model,
    bernoulli_params,
    categorical_exact_neg_elbo,
    categorical_guide,
    categorical_model,
    plated_exact_neg_elbo,
    plated_guide,
    plated_model,
)

from pyro_go import REBAR, RELAX, Baseline, TraceRELAX_ELBO

CONTROL_VARIATES = {
    "rebar": REBAR,
    "relax": RELAX,
    "relaxed-rebar": lambda: RELAX(rebar=True),
    "baseline": Baseline,
}


@pytest.mark.parametrize("variant", list(CONTROL_VARIATES))
def test_coupled_bernoulli_vector(variant):
    params = bernoulli_params()
    exact = exact_gradient(bernoulli_exact_neg_elbo(), params)
    elbo = TraceRELAX_ELBO(CONTROL_VARIATES[variant]())
    samples = gradient_samples(elbo, bernoulli_model, bernoulli_guide, params, 1500)
    assert_unbiased(samples, exact)


def test_vectorized_particles():
    params = bernoulli_params()
    exact = exact_gradient(bernoulli_exact_neg_elbo(), params)
    elbo = TraceRELAX_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=0)
    samples = gradient_samples(elbo, bernoulli_model, bernoulli_guide, params, 800)
    assert_unbiased(samples, exact)


# ------------------------------------------------------------------------- Categorical

CAT_TABLE = torch.tensor(CATEGORICAL["table"])
CAT_PRIOR = torch.tensor(CATEGORICAL["prior"])
CAT_OBS = torch.tensor(CATEGORICAL["obs"])


def one_hot_model():
    """The categorical problem with the table looked up by a product with the one-hot
    value, so that relaxed values flow through (REBAR's term is informative)."""
    y = pyro.sample("y", dist.OneHotCategorical(CAT_PRIOR).expand([2]).to_event(1))
    score = (y[..., 0, :] * CAT_TABLE[0]).sum(-1) * (y[..., 1, :] * CAT_TABLE[1]).sum(-1)
    pyro.sample("x", dist.Normal(score, 1.0), obs=CAT_OBS)


@pytest.mark.parametrize("variant", ["rebar", "relaxed-rebar"])
def test_one_hot_categorical(variant):
    categorical_guide(True)
    params = [pyro.param("cat_logits").unconstrained()]
    exact = exact_gradient(categorical_exact_neg_elbo(), params)
    elbo = TraceRELAX_ELBO(CONTROL_VARIATES[variant]())
    samples = gradient_samples(elbo, one_hot_model, lambda: categorical_guide(True), params, 1500)
    assert_unbiased(samples, exact)


@pytest.mark.parametrize("variant", ["relax", "baseline"])
def test_index_categorical(variant):
    categorical_guide(False)
    params = [pyro.param("cat_logits").unconstrained()]
    exact = exact_gradient(categorical_exact_neg_elbo(), params)
    elbo = TraceRELAX_ELBO(CONTROL_VARIATES[variant]())
    samples = gradient_samples(
        elbo, lambda: categorical_model(False), lambda: categorical_guide(False), params, 1500
    )
    assert_unbiased(samples, exact)


# ---------------------------------------------------- plates: per-slice costs and scale


@pytest.mark.parametrize("subsample_size", [None, 3])
def test_plated_local_latents(subsample_size):
    plated_guide(None)
    plated_model(None)
    params = [pyro.param("local_logits").unconstrained(), pyro.param("weights").unconstrained()]
    exact = exact_gradient(plated_exact_neg_elbo(), params)
    elbo = TraceRELAX_ELBO(RELAX(rebar=True))
    samples = gradient_samples(elbo, plated_model, plated_guide, params, 1500, subsample_size)
    assert_unbiased(samples, exact)


def test_costs_are_per_slice():
    """In a data plate, each slice's weight ``f(b) − c(z̃)`` is its own cost: with a
    zero control variate the logits gradient of slice n is its own cost times its score."""
    plated_guide(None)
    plated_model(None)

    class Zero(Baseline):
        def __call__(self, site, zeta, relaxed_cost, args, kwargs):
            return torch.zeros(())

    elbo = TraceRELAX_ELBO(Zero())
    particle = elbo._get_trace(plated_model, plated_guide, (None,), {})
    site = particle.sites["z"]
    logits_grad, _ = elbo._site_estimate(particle, site)
    guide_site = particle.guide_trace.nodes["z"]
    x_site = particle.model_trace.nodes["x"]
    prior = dist.Bernoulli(torch.tensor([0.3, 0.6])).log_prob(site.value).sum(-1)
    cost = guide_site["log_prob"].detach() - prior - x_site["log_prob"].detach()
    expected = cost.unsqueeze(-1) * (site.value - torch.sigmoid(site.logits.detach()))
    assert torch.allclose(logits_grad, expected, atol=1e-5)


# ---------------------------------------------- continuous pathwise sites beside RELAX


def mixed_model():
    w = pyro.sample("w", dist.Normal(0.0, 1.0))
    z = pyro.sample("z", dist.Bernoulli(0.5))
    pyro.sample("x", dist.Normal(w + 2.0 * z, 1.0), obs=torch.tensor(1.5))


def mixed_guide():
    loc = pyro.param("loc", torch.tensor(0.2))
    scale = pyro.param("scale", torch.tensor(0.8), constraint=dist.constraints.positive)
    logit = pyro.param("logit", torch.tensor(-0.3))
    pyro.sample("w", dist.Normal(loc, scale))
    pyro.sample("z", dist.Bernoulli(logits=logit))


def mixed_exact_neg_elbo():
    """Closed form over ``w`` (Gaussian expectations), enumeration over ``z``."""
    loc, scale, logit = pyro.param("loc"), pyro.param("scale"), pyro.param("logit")
    kl_w = torch.distributions.kl_divergence(dist.Normal(loc, scale), dist.Normal(0.0, 1.0))
    total = -kl_w
    for z in (0.0, 1.0):
        log_q = dist.Bernoulli(logits=logit).log_prob(torch.tensor(z))
        expected_lik = dist.Normal(loc + 2.0 * z, 1.0).log_prob(torch.tensor(1.5)) - scale**2 / 2
        total = total + log_q.exp() * (expected_lik + torch.log(torch.tensor(0.5)) - log_q)
    return -total


@pytest.mark.parametrize("variant", ["relaxed-rebar", "baseline"])
def test_continuous_and_discrete_sites(variant):
    mixed_guide()
    params = [pyro.param(name).unconstrained() for name in ("loc", "scale", "logit")]
    exact = exact_gradient(mixed_exact_neg_elbo(), params)
    elbo = TraceRELAX_ELBO(CONTROL_VARIATES[variant]())
    samples = gradient_samples(elbo, mixed_model, mixed_guide, params, 2000)
    assert_unbiased(samples, exact)


# ------------------------------------------------------- training the control variate


def _mean_variance(elbo, num_draws=300):
    total = 0.0
    for _ in range(num_draws):
        elbo.differentiable_loss(bernoulli_model, bernoulli_guide)
        total += elbo.last_variance["z"]
    return total / num_draws


UNTRAINED = {
    "rebar": lambda: REBAR(eta=0.0),
    "relax": RELAX,
    "relaxed-rebar": lambda: RELAX(rebar=True, eta=0.0),
    "baseline": Baseline,
}


@pytest.mark.parametrize("variant", list(UNTRAINED))
def test_training_the_control_variate_lowers_variance(variant):
    """With the model and guide frozen (learning rate 0), SVI steps move only the
    control variate's parameters (started away from their optimum: ``η = 0`` is
    REINFORCE without baseline), and the estimator's variance objective drops."""
    bernoulli_params()
    elbo = TraceRELAX_ELBO(UNTRAINED[variant]())
    frozen = {"logits", "prior_logits"}
    optim = Adam(lambda name, _: {"lr": 0.0 if name in frozen else 0.05})
    svi = SVI(bernoulli_model, bernoulli_guide, optim, elbo)
    svi.step()  # creates the control variate's parameters
    before = _mean_variance(elbo)
    for _ in range(300):
        svi.step()
    after = _mean_variance(elbo)
    assert pyro.param("logits").tolist() == pytest.approx([0.3, -0.2, 0.8, -1.0])
    # measured on seeds 0 and 1: after / before = 0.53-0.61 (REBAR), 0.47-0.49 (RELAX),
    # 0.51-0.54 (relaxed REBAR), 0.79 (a constant baseline)
    assert after < (0.9 if variant == "baseline" else 0.75) * before, (before, after)


def test_parameters_live_in_the_param_store():
    bernoulli_params()
    svi = SVI(bernoulli_model, bernoulli_guide, Adam({"lr": 0.01}), TraceRELAX_ELBO())
    svi.step()
    names = set(pyro.get_param_store().keys())
    assert {"z.relax_eta", "z.relax_temperature"} <= names
    assert any(name.startswith("z.relax_network$$$") for name in names)
    eta = pyro.param("z.relax_eta").item()
    svi.step()
    assert pyro.param("z.relax_eta").item() != eta


def test_own_control_variate_optimizer():
    bernoulli_params()
    control_optim = Adam({"lr": 0.1, "betas": (0.9, 0.99999)})
    elbo = TraceRELAX_ELBO(REBAR(), control_variate_optim=control_optim)
    svi = SVI(bernoulli_model, bernoulli_guide, Adam({"lr": 0.0}), elbo)
    svi.step()
    eta = pyro.param("z.relax_eta").item()
    svi.step()
    assert pyro.param("z.relax_eta").item() != eta  # stepped by control_optim
    assert pyro.param("logits").tolist() == pytest.approx([0.3, -0.2, 0.8, -1.0])


def test_loss_matches_surrogate_value():
    params = bernoulli_params()
    elbo = TraceRELAX_ELBO()
    pyro.set_rng_seed(3)
    estimate = elbo.loss(bernoulli_model, bernoulli_guide)
    pyro.set_rng_seed(3)
    surrogate = elbo.differentiable_loss(bernoulli_model, bernoulli_guide)
    assert surrogate.item() == pytest.approx(estimate, rel=1e-6)
    exact = bernoulli_exact_neg_elbo().item()
    losses = torch.tensor([elbo.loss(bernoulli_model, bernoulli_guide) for _ in range(2000)])
    assert abs(losses.mean().item() - exact) < 5 * losses.std().item() / 2000**0.5
    assert params[0].grad is None


def test_fixed_noise_gives_the_hard_threshold_sample():
    u = torch.tensor([0.9, 0.1, 0.5, 0.2])
    v = torch.tensor([0.3, 0.3, 0.3, 0.3])

    def guide():
        logits = pyro.param("logits", torch.tensor([0.3, -0.2, 0.8, -1.0]))
        pyro.sample("z", dist.Bernoulli(logits=logits).to_event(1), infer={"relax_noise": (u, v)})

    elbo = TraceRELAX_ELBO(REBAR())
    particle = elbo._get_trace(bernoulli_model, guide, (), {})
    logits = torch.tensor([0.3, -0.2, 0.8, -1.0])
    expected = (logits + torch.log(u / (1 - u)) > 0).float()
    assert torch.equal(particle.sites["z"].value, expected)
    first = torch.autograd.grad(
        elbo.differentiable_loss(bernoulli_model, guide), [pyro.param("logits").unconstrained()]
    )
    second = torch.autograd.grad(
        elbo.differentiable_loss(bernoulli_model, guide), [pyro.param("logits").unconstrained()]
    )
    assert torch.equal(first[0], second[0])


# --------------------------------------------------------------------------- errors


def test_unsupported_site_names_the_site():
    def guide():
        pyro.sample("n", dist.Poisson(torch.tensor(3.0)))

    def model():
        pyro.sample("n", dist.Poisson(torch.tensor(2.0)))

    with pytest.raises(ValueError, match="'n'.*Poisson.*TraceGO_ELBO"):
        TraceRELAX_ELBO().loss(model, guide)


def test_guide_child_of_a_relax_site_is_an_error():
    def guide():
        z = pyro.sample("z", dist.Bernoulli(torch.tensor(0.4)))
        pyro.sample("w", dist.Normal(z, 1.0))

    def model():
        z = pyro.sample("z", dist.Bernoulli(torch.tensor(0.5)))
        pyro.sample("w", dist.Normal(z, 1.0))

    with pytest.raises(ValueError, match="'w' depends on the discrete guide site 'z'"):
        TraceRELAX_ELBO().differentiable_loss(model, guide)


def test_rebar_on_index_categorical_asks_for_one_hot():
    categorical_guide(False)
    with pytest.raises(ValueError, match="OneHotCategorical"):
        TraceRELAX_ELBO(REBAR()).differentiable_loss(
            lambda: categorical_model(False), lambda: categorical_guide(False)
        )


def test_enumerated_site_is_an_error():
    def guide():
        pyro.sample("z", dist.Bernoulli(torch.tensor(0.4)), infer={"enumerate": "parallel"})

    with pytest.raises(ValueError, match="enumeration"):
        TraceRELAX_ELBO().loss(lambda: pyro.sample("z", dist.Bernoulli(0.5)), guide)


def test_conditional_sample_matches_the_conditional_law():
    """``z̃ ~ p(z | b)``: pooled over ``b`` drawn with probability ``θ``, conditional
    samples are logistic with location ``l`` (and, per ``b``, on the right side of 0)."""
    from pyro_go.ops.relaxation import bernoulli_conditional_z, categorical_conditional_z

    torch.manual_seed(0)
    logits = torch.full((200000,), 0.7)
    b = (torch.rand_like(logits) < torch.sigmoid(logits)).float()
    z_tilde = bernoulli_conditional_z(logits, b, torch.rand_like(logits))
    assert ((z_tilde > 0).float() == b).all()
    u = torch.sigmoid(z_tilde - logits)  # logistic(l) -> uniform
    assert abs(u.mean().item() - 0.5) < 0.005 and abs(u.var().item() - 1 / 12) < 0.002

    cat_logits = torch.tensor([0.5, -1.0, 0.2]).expand(200000, 3)
    index = torch.distributions.Categorical(logits=cat_logits).sample()
    z_tilde = categorical_conditional_z(cat_logits, index, torch.rand(200000, 3))
    assert (z_tilde.argmax(-1) == index).all()
    # pooled z̃ is Gumbel(log π): its max is Gumbel(0), with mean Euler's γ
    assert abs(z_tilde.max(-1).values.mean().item() - 0.5772) < 0.01


# ------------------------------------------------------------------ resuming a run


def _relax_svi(variant):
    """An SVI run with every kind of control-variate state: a default network, ``η``
    and the temperature (``relaxed-rebar``), or those stepped by their own optimizer."""
    if variant == "own-optimizer":
        control_optim = Adam({"lr": 0.1, "betas": (0.9, 0.99999)})
        elbo = TraceRELAX_ELBO(RELAX(rebar=True), control_variate_optim=control_optim)
    else:
        control_optim = None
        elbo = TraceRELAX_ELBO(CONTROL_VARIATES[variant]())
    optim = Adam({"lr": 0.05})
    return SVI(bernoulli_model, bernoulli_guide, optim, elbo), [optim, control_optim]


def _stored_params():
    return {name: value.detach().clone() for name, value in pyro.get_param_store().items()}


@pytest.mark.parametrize("variant", ["relax", "relaxed-rebar", "baseline", "own-optimizer"])
def test_resumed_run_matches_the_uninterrupted_run(variant, tmp_path):
    """Saved at step 3 and resumed with new objects (param store, optimizer states and
    RNG state loaded from disk), the run takes exactly the steps of the uninterrupted
    run: the control variate continues from its stored weights."""
    bernoulli_params()
    svi, _ = _relax_svi(variant)
    losses = [svi.step() for _ in range(6)]
    uninterrupted = _stored_params()

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    bernoulli_params()
    svi, optims = _relax_svi(variant)
    resumed = [svi.step() for _ in range(3)]
    pyro.get_param_store().save(tmp_path / "params.pt")
    for i, optim in enumerate(filter(None, optims)):
        optim.save(tmp_path / f"optim{i}.pt")
    torch.save(pyro.util.get_rng_state(), tmp_path / "rng.pt")

    pyro.clear_param_store()
    pyro.set_rng_seed(123)  # a new process
    svi, optims = _relax_svi(variant)
    pyro.get_param_store().load(tmp_path / "params.pt")
    for i, optim in enumerate(filter(None, optims)):
        optim.load(tmp_path / f"optim{i}.pt")
    pyro.util.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=False))
    resumed += [svi.step() for _ in range(3)]

    assert resumed == losses
    assert any(".relax_" in name for name in uninterrupted)
    restored = _stored_params()
    assert restored.keys() == uninterrupted.keys()
    for name, value in uninterrupted.items():
        assert torch.equal(restored[name], value), name


def test_stored_network_of_another_size_is_an_error():
    bernoulli_params()
    TraceRELAX_ELBO(RELAX()).differentiable_loss(bernoulli_model, bernoulli_guide)
    with pytest.raises(ValueError, match="'z.relax_network' of another size.*hidden=5"):
        TraceRELAX_ELBO(RELAX(hidden=5)).differentiable_loss(bernoulli_model, bernoulli_guide)
