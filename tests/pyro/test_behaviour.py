"""TraceGO_ELBO's behaviour beyond plain unbiasedness: the score-function fallback for
discrete internal sites, errors that name the site, equivalence of replay modes,
Pyro's handlers, and a drop-in SVI run."""

import itertools
import warnings

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from conftest import assert_unbiased, exact_gradient, gradient_samples
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO, config_enumerate
from pyro.optim import Adam

from pyro_go import RELAX, TraceGO_ELBO, TraceRELAX_ELBO

# ----------------------------------------------- discrete internal site (fallback)


def chain_model():
    z1 = pyro.sample("z1", dist.Bernoulli(0.4))
    z2 = pyro.sample("z2", dist.Bernoulli(0.3 + 0.4 * z1))
    pyro.sample("x", dist.Normal(z1 + 2 * z2, 1.0), obs=torch.tensor(1.5))


def chain_guide():
    p1 = pyro.param("p1", torch.tensor(0.5), constraint=dist.constraints.unit_interval)
    p2 = pyro.param("p2", torch.tensor([0.3, 0.7]), constraint=dist.constraints.unit_interval)
    z1 = pyro.sample("z1", dist.Bernoulli(p1))
    pyro.sample("z2", dist.Bernoulli(p2[z1.long()]))


def chain_exact_neg_elbo():
    p1, p2 = pyro.param("p1"), pyro.param("p2")
    total = 0.0
    for a, b in itertools.product([0.0, 1.0], repeat=2):
        z1, z2 = torch.tensor(a), torch.tensor(b)
        log_q = dist.Bernoulli(p1).log_prob(z1) + dist.Bernoulli(p2[int(a)]).log_prob(z2)
        log_p = (
            dist.Bernoulli(0.4).log_prob(z1)
            + dist.Bernoulli(0.3 + 0.4 * z1).log_prob(z2)
            + dist.Normal(z1 + 2 * z2, 1.0).log_prob(torch.tensor(1.5))
        )
        total = total + log_q.exp() * (log_p - log_q)
    return -total


def test_discrete_internal_site_falls_back_to_score_function():
    chain_guide()
    params = [pyro.param("p1").unconstrained(), pyro.param("p2").unconstrained()]
    exact = exact_gradient(chain_exact_neg_elbo(), params)
    elbo = TraceGO_ELBO()
    with pytest.warns(UserWarning, match="'z1' has children in the guide.*z2.*appendix B.4"):
        elbo.differentiable_loss(chain_model, chain_guide)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once only
        samples = gradient_samples(elbo, chain_model, chain_guide, params, 1200)
    assert_unbiased(samples, exact)


def test_strict_raises_for_discrete_internal_site():
    with pytest.raises(ValueError, match="'z1' has children in the guide"):
        TraceGO_ELBO(strict=True).differentiable_loss(chain_model, chain_guide)


# ------------------------------------------------------------------ clear errors


def test_site_without_rule_is_named():
    """Warned (score function) by default, an error under ``strict=True``; the
    gradients are checked in test_parity.py."""

    def model():
        pyro.sample("angle", dist.VonMises(0.0, 1.0))

    def guide():
        pyro.sample("angle", dist.VonMises(pyro.param("m", torch.tensor(0.0)), 2.0))

    with pytest.warns(UserWarning, match="guide site 'angle'.*VonMises.*score-function"):
        TraceGO_ELBO().differentiable_loss(model, guide)
    with pytest.raises(ValueError, match="guide site 'angle'.*VonMises.*register_go_rule"):
        TraceGO_ELBO(strict=True).differentiable_loss(model, guide)


def test_enumerated_guide_site_is_refused():
    def model():
        pyro.sample("z", dist.Bernoulli(0.5))

    def guide():
        pyro.sample("z", dist.Bernoulli(0.3), infer={"enumerate": "parallel"})

    with pytest.raises(ValueError, match="guide site 'z' asks for enumeration"):
        TraceGO_ELBO().differentiable_loss(model, guide)


def non_broadcasting_model():
    z = pyro.sample("z", dist.Bernoulli(0.5 * torch.ones(3)).to_event(1))
    total = z.reshape(-1).sum()  # breaks under an extra batch dim
    pyro.sample("x", dist.Normal(total, 1.0), obs=torch.tensor(2.0))


def non_broadcasting_guide():
    probs = pyro.param("q", torch.full((3,), 0.4), constraint=dist.constraints.unit_interval)
    pyro.sample("z", dist.Bernoulli(probs).to_event(1))


def test_non_broadcasting_model_gets_a_clear_error_and_a_way_out():
    with pytest.raises(ValueError, match="vectorize_perturbations=False"):
        TraceGO_ELBO().differentiable_loss(non_broadcasting_model, non_broadcasting_guide)
    loss = TraceGO_ELBO(vectorize_perturbations=False).differentiable_loss(
        non_broadcasting_model, non_broadcasting_guide
    )
    loss.backward()
    assert pyro.param("q").unconstrained().grad is not None


ELBOS = {"go": TraceGO_ELBO, "relax": lambda: TraceRELAX_ELBO(RELAX())}


def normal_means_model(data, mask=True):
    with pyro.plate("data", len(data)):
        z = pyro.sample("z", dist.Bernoulli(0.5))
        pyro.sample("x", dist.Normal(2.0 * z - 1.0, 1.0).mask(mask), obs=data)


def normal_means_guide(data, mask=True):
    logits = pyro.param("logits", torch.zeros(len(data)))
    with pyro.plate("data", len(data)):
        pyro.sample("z", dist.Bernoulli(logits=logits))


def _params():
    return {name: value.detach().clone() for name, value in pyro.get_param_store().items()}


def _assert_step_refused(svi, data, match, **kwargs):
    svi.step(torch.tensor([0.5, -1.0, 2.0]), **kwargs)  # creates every parameter
    before = _params()
    with pytest.raises(ValueError, match=match):
        svi.step(data, **kwargs)
    after = _params()
    assert after.keys() == before.keys()
    for name, value in before.items():
        assert torch.equal(after[name], value), name  # the param store is untouched


@pytest.mark.parametrize("elbo", list(ELBOS))
@pytest.mark.parametrize("masked", [False, True])
def test_non_finite_observation_is_named_before_any_step(elbo, masked):
    """``inf`` passes Pyro's support check for a Normal; masked or not, it would make the
    gradient nan.  The step raises naming the site and leaves the param store as it was."""
    svi = SVI(normal_means_model, normal_means_guide, Adam({"lr": 0.1}), ELBOS[elbo]())
    data = torch.tensor([0.5, float("inf"), 2.0])
    mask = torch.tensor([True, not masked, True])
    _assert_step_refused(
        svi, data, "observed site 'x' \\(1 of 3 values, e.g. inf at \\(1,\\)\\)", mask=mask
    )


def bad_factor_model(data):
    normal_means_model(data)
    penalty = pyro.param("penalty", torch.tensor(1.0))
    pyro.factor("constraint", torch.log(penalty - 1.0))  # -inf at the initial value


@pytest.mark.parametrize("elbo", list(ELBOS))
def test_non_finite_loss_names_the_site_before_any_step(elbo):
    svi = SVI(bad_factor_model, normal_means_guide, Adam({"lr": 0.1}), ELBOS[elbo]())
    data = torch.tensor([0.5, -1.0, 2.0])
    with pytest.raises(ValueError, match="model site 'constraint' \\(log-density -inf\\)"):
        svi.step(data)
    assert pyro.param("penalty").item() == 1.0
    assert pyro.param("logits").tolist() == [0.0, 0.0, 0.0]
    assert all(value.grad is None for value in pyro.get_param_store().values())


# ------------------------------------- model-side enumeration (TraceEnum_ELBO models)

MIXTURE_DATA = torch.tensor([-2.1, -1.9, 2.0, 2.2, 1.8])


@config_enumerate
def mixture_model(data):
    weights = pyro.param("weights", torch.ones(2) / 2, constraint=dist.constraints.simplex)
    locs = pyro.sample("locs", dist.Normal(0.0, 10.0).expand([2]).to_event(1))
    with pyro.plate("data", len(data)):
        assignment = pyro.sample("assignment", dist.Categorical(weights))
        pyro.sample("obs", dist.Normal(locs[assignment], 1.0), obs=data)


def mixture_guide(data):
    locs = pyro.param("locs_loc", torch.tensor([-1.0, 1.0]))
    pyro.sample("locs", dist.Normal(locs, 0.1).to_event(1))


@pytest.mark.parametrize("elbo", list(ELBOS))
def test_model_side_enumeration_is_refused(elbo):
    """A mixture written for TraceEnum_ELBO: the assignments have no guide site, and
    drawing them from the prior would be another objective (the components collapse)."""
    match = "model site 'assignment' asks for enumeration.*no guide site.*TraceEnum_ELBO"
    with pytest.raises(ValueError, match=match):
        ELBOS[elbo]().differentiable_loss(mixture_model, mixture_guide, MIXTURE_DATA)
    TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(
        mixture_model, mixture_guide, MIXTURE_DATA
    )


# ---------------------------------------------- equivalence of the replay modes


def vae_like_model(data):
    decoder = pyro.param("decoder", torch.linspace(-1, 1, 15).reshape(3, 5))
    with pyro.plate("data", data.shape[0]):
        z = pyro.sample("z", dist.Bernoulli(0.3 * torch.ones(3)).to_event(1))
        y = pyro.sample("y", dist.Categorical(torch.ones(4) / 4))
        logits = torch.tanh(z @ decoder) + 0.1 * y.unsqueeze(-1)
        pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=data)


def vae_like_guide(data):
    encoder = pyro.param("encoder", torch.linspace(-0.5, 0.5, 15).reshape(5, 3))
    cat = pyro.param("cat", torch.zeros(5, 4))
    with pyro.plate("data", data.shape[0]):
        pyro.sample("z", dist.Bernoulli(logits=data @ encoder).to_event(1))
        pyro.sample("y", dist.Categorical(logits=data @ cat))


@pytest.mark.parametrize(
    "options",
    [
        {"vectorize_perturbations": False},
        {"chunk_size": 1},
        {"chunk_size": 4},
        {},
    ],
    ids=["unvectorized", "chunk-1", "chunk-4", "auto"],
)
def test_replay_modes_agree(options):
    data = (torch.rand(6, 5) > 0.5).float()
    vae_like_guide(data)
    vae_like_model(data)
    params = [pyro.param(n).unconstrained() for n in ("encoder", "cat", "decoder")]

    def grads(elbo):
        pyro.set_rng_seed(3)
        loss = elbo.differentiable_loss(vae_like_model, vae_like_guide, data)
        return loss, torch.autograd.grad(loss, params)

    reference = TraceGO_ELBO(chunk_size=None)  # one replay of the whole stack
    loss_ref, grads_ref = grads(reference)
    # 3 coupled Bernoulli elements (1 alternative) + 1 Categorical (3 alternatives) + base
    assert reference.last_num_evaluations == 3 + 3 + 1
    loss, grads_other = grads(TraceGO_ELBO(**options))
    assert torch.allclose(loss, loss_ref)
    for a, b in zip(grads_ref, grads_other, strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_safety_rule_couples_plate_mixed_by_a_later_site():
    """A model site outside the plate that depends on the plated latents mixes the
    slices; the estimator must then perturb slices one at a time."""

    def model():
        with pyro.plate("data", 3):
            z = pyro.sample("z", dist.Bernoulli(0.5))
        # keepdim keeps the stack of perturbations left of the plate (as with enumeration)
        mean = torch.tanh(z.sum(-1, keepdim=True) * 0.7)
        pyro.sample("x", dist.Normal(mean, 0.5), obs=torch.tensor([0.4]))

    def guide():
        logits = pyro.param("logits", torch.tensor([0.2, -0.5, 1.0]))
        with pyro.plate("data", 3):
            pyro.sample("z", dist.Bernoulli(logits=logits))

    def exact_neg_elbo():
        logits = pyro.param("logits")
        total = 0.0
        for bits in itertools.product([0.0, 1.0], repeat=3):
            z = torch.tensor(bits)
            log_q = dist.Bernoulli(logits=logits).log_prob(z).sum()
            log_p = dist.Bernoulli(0.5).log_prob(z).sum() + dist.Normal(
                torch.tanh(z.sum() * 0.7), 0.5
            ).log_prob(torch.tensor(0.4))
            total = total + log_q.exp() * (log_p - log_q)
        return -total

    guide()
    params = [pyro.param("logits").unconstrained()]
    exact = exact_gradient(exact_neg_elbo(), params)
    samples = gradient_samples(TraceGO_ELBO(), model, guide, params, 1500)
    assert_unbiased(samples, exact)


# ------------------------------------------------------------- Pyro's handlers


def test_scale_and_mask_are_honoured():
    """poutine.scale multiplies every gradient; a masked observation contributes none."""
    data = torch.tensor([1.0, 2.0])

    def model(mask):
        with pyro.plate("data", 2):
            z = pyro.sample("z", dist.Poisson(2.0))
            with poutine.mask(mask=mask):
                pyro.sample("x", dist.Normal(z, 1.0), obs=data)

    def guide(mask):
        rate = pyro.param("rate", torch.tensor([1.5, 2.5]), constraint=dist.constraints.positive)
        with pyro.plate("data", 2):
            pyro.sample("z", dist.Poisson(rate))

    guide(True)
    rate = pyro.param("rate").unconstrained()

    def grad(loss_fn, mask):
        pyro.set_rng_seed(1)
        return torch.autograd.grad(loss_fn(model, guide, mask), rate)[0]

    plain = grad(TraceGO_ELBO().differentiable_loss, True)
    scaled = grad(poutine.scale(TraceGO_ELBO().differentiable_loss, scale=3.0), True)
    torch.testing.assert_close(scaled, 3 * plain)

    mask = torch.tensor([True, False])
    masked = grad(TraceGO_ELBO().differentiable_loss, mask)

    def model_first_x_only(mask):
        with pyro.plate("data", 2):
            z = pyro.sample("z", dist.Poisson(2.0))
        pyro.sample("x", dist.Normal(z[..., :1], 1.0), obs=data[:1])

    pyro.set_rng_seed(1)
    unmasked_equivalent = torch.autograd.grad(
        TraceGO_ELBO().differentiable_loss(model_first_x_only, guide, True), rate
    )[0]
    torch.testing.assert_close(masked, unmasked_equivalent)
    assert not torch.allclose(masked, plain)


def test_loss_under_no_grad_and_module_parameters():
    decoder = torch.nn.Linear(3, 5)

    def model(data):
        pyro.module("decoder", decoder)
        with pyro.plate("data", data.shape[0]):
            z = pyro.sample("z", dist.Bernoulli(0.5 * torch.ones(3)).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=data)

    def guide(data):
        logits = pyro.param("logits", torch.zeros(data.shape[0], 3))
        with pyro.plate("data", data.shape[0]):
            pyro.sample("z", dist.Bernoulli(logits=logits).to_event(1))

    data = (torch.rand(4, 5) > 0.5).float()
    svi = SVI(model, guide, Adam({"lr": 0.01}), TraceGO_ELBO())
    with torch.no_grad():
        assert isinstance(svi.evaluate_loss(data), float)
    before = decoder.weight.detach().clone()
    svi.step(data)
    assert not torch.equal(before, decoder.weight.detach())
    assert "decoder$$$weight" in pyro.get_param_store()


# ----------------------------------------------------------------- drop-in SVI

W_TRUE = torch.tensor([[2.0, -1.0, 0.5], [-1.5, 1.0, 2.0], [0.5, 2.0, -2.0], [1.0, 1.0, 1.0]])


def sbn_model(data):
    with pyro.plate("data", data.shape[0]):
        z = pyro.sample("z", dist.Bernoulli(0.5 * torch.ones(4)).to_event(1))
        pyro.sample("x", dist.Normal(z @ W_TRUE, 0.3).to_event(1), obs=data)


def sbn_guide(data):
    logits = pyro.param("logits", torch.zeros(data.shape[0], 4))
    with pyro.plate("data", data.shape[0]):
        pyro.sample("z", dist.Bernoulli(logits=logits).to_event(1))


def sbn_exact_elbo(data):
    logits = pyro.param("logits").detach()
    total = 0.0
    for bits in itertools.product([0.0, 1.0], repeat=4):
        z = torch.tensor(bits)
        log_q = dist.Bernoulli(logits=logits).log_prob(z).sum(-1)
        log_p = dist.Bernoulli(0.5).log_prob(z).sum() + dist.Normal(z @ W_TRUE, 0.3).log_prob(
            data
        ).sum(-1)
        total = total + (log_q.exp() * (log_p - log_q)).sum()
    return total.item()


def test_drop_in_svi_converges_faster_than_trace_elbo():
    generator = torch.Generator().manual_seed(0)
    z_true = (torch.rand(20, 4, generator=generator) > 0.5).float()
    data = z_true @ W_TRUE + 0.3 * torch.randn(20, 3, generator=generator)
    results = {}
    for name, loss in [("go", TraceGO_ELBO()), ("trace", Trace_ELBO())]:
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        svi = SVI(sbn_model, sbn_guide, Adam({"lr": 0.1}), loss)
        for _ in range(150):
            svi.step(data)
        results[name] = sbn_exact_elbo(data)
    assert results["go"] > results["trace"] + 5.0, results


def test_obs_mask_imputes_missing_counts():
    """``obs_mask`` splits a site into observed and unobserved parts; the unobserved
    counts are discrete guide leaves that get GO gradients."""
    data = torch.tensor([2.0, 0.0, 5.0, 1.0])
    mask = torch.tensor([True, False, True, False])

    def model():
        rate = pyro.param("rate", torch.tensor(2.0), constraint=dist.constraints.positive)
        with pyro.plate("data", 4):
            pyro.sample("x", dist.Poisson(rate), obs=data, obs_mask=mask)

    def guide():
        guess = pyro.param("guess", torch.tensor([1.0, 3.0]), constraint=dist.constraints.positive)
        with pyro.plate("data", 4):
            pyro.sample("x_unobserved", dist.Poisson(guess.repeat(2)))

    svi = SVI(model, guide, Adam({"lr": 0.05}), TraceGO_ELBO())
    before = pyro.param("guess", torch.tensor([1.0, 3.0]), constraint=dist.constraints.positive)
    before = before.detach().clone()
    for _ in range(3):
        assert torch.isfinite(torch.tensor(svi.step()))
    assert not torch.equal(before, pyro.param("guess").detach())


def test_sequential_plate_sites_are_stacked_in_one_replay():
    data = [torch.tensor(0.3), torch.tensor(1.4)]

    def model():
        for i in pyro.plate("seq", 2):
            z = pyro.sample(f"z_{i}", dist.Bernoulli(0.3))
            pyro.sample(f"x_{i}", dist.Normal(2 * z, 1.0), obs=data[i])

    def guide():
        probs = pyro.param(
            "seq_probs", torch.tensor([0.6, 0.4]), constraint=dist.constraints.unit_interval
        )
        for i in pyro.plate("seq", 2):
            pyro.sample(f"z_{i}", dist.Bernoulli(probs[i]))

    def exact_neg_elbo():
        probs = pyro.param("seq_probs")
        total = 0.0
        for i in range(2):
            for b in (0.0, 1.0):
                z = torch.tensor(b)
                log_q = dist.Bernoulli(probs[i]).log_prob(z)
                log_p = dist.Bernoulli(0.3).log_prob(z) + dist.Normal(2 * z, 1.0).log_prob(data[i])
                total = total + log_q.exp() * (log_p - log_q)
        return -total

    guide()
    params = [pyro.param("seq_probs").unconstrained()]
    exact = exact_gradient(exact_neg_elbo(), params)
    samples = gradient_samples(TraceGO_ELBO(), model, guide, params, 1000)
    assert_unbiased(samples, exact)


def test_top_of_finite_support_and_impossible_categories():
    """At y = n (Binomial) the raw GO term vanishes and y + 1 is never evaluated; a
    category of probability zero is never an alternative worth a NaN."""

    def model():
        pyro.sample("k", dist.Binomial(3, torch.tensor(0.5)))
        pyro.sample("c", dist.Categorical(torch.tensor([0.2, 0.3, 0.5])))

    def guide():
        p = pyro.param("p", torch.tensor(0.97), constraint=dist.constraints.unit_interval)
        logits = pyro.param("logits", torch.tensor([0.0, 1.0, -float("inf")]))
        pyro.sample("k", dist.Binomial(3, p))
        pyro.sample("c", dist.Categorical(logits=logits))

    def exact_neg_elbo():
        p = pyro.param("p")
        probs = torch.softmax(pyro.param("logits"), -1)[:2]
        total = 0.0
        for k in range(4):
            log_q = dist.Binomial(3, p).log_prob(torch.tensor(float(k)))
            log_p = dist.Binomial(3, torch.tensor(0.5)).log_prob(torch.tensor(float(k)))
            total = total + log_q.exp() * (log_p - log_q)
        prior = torch.tensor([0.2, 0.3])
        return -(total + (probs * (prior.log() - probs.log())).sum())

    guide()
    params = [pyro.param("p").unconstrained(), pyro.param("logits").unconstrained()]
    exact = exact_gradient(exact_neg_elbo(), params)
    samples = gradient_samples(TraceGO_ELBO(), model, guide, params, 1500)
    assert torch.isfinite(samples).all()
    assert_unbiased(samples[:, :3], exact[:3])
    assert (samples[:, 3] == 0).all()


def test_auto_chunks_bound_the_stacked_values(monkeypatch):
    """``chunk_size="auto"`` splits a replay when the perturbed values get large."""
    from pyro_go.infer import perturbation

    monkeypatch.setattr(perturbation, "AUTO_CHUNK_ELEMENTS", 12)  # 6 x 3 values -> chunks of 1
    test_replay_modes_agree({})


def test_bad_chunk_size_raises():
    with pytest.raises(ValueError, match="chunk_size must be"):
        TraceGO_ELBO(chunk_size=0)
