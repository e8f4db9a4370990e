"""Absorbing perturbations into linear layers changes speed, not gradients."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from torch import nn

from pyro_go import TraceGO_ELBO
from pyro_go.infer import linear_absorption, perturbation
from pyro_go.ops.deferred import DeferredTensor

LATENTS, PIXELS = 6, 16


@pytest.fixture
def hits(monkeypatch) -> list[int]:
    """The products each replay's :class:`AbsorbLinear` absorbed, one entry per replay."""
    recorded: list[int] = []
    original = linear_absorption.AbsorbLinear.__exit__

    def record_hits(self, *exc):
        recorded.append(self.hits)
        return original(self, *exc)

    monkeypatch.setattr(linear_absorption.AbsorbLinear, "__exit__", record_hits)
    return recorded


def make_decoder(kind: str) -> nn.Module:
    torch.manual_seed(1)
    if kind == "linear":
        return nn.Linear(LATENTS, PIXELS)
    if kind == "nonlinear":
        return nn.Sequential(nn.Linear(LATENTS, 8), nn.Tanh(), nn.Linear(8, PIXELS))
    if kind == "matmul":
        weight = nn.Parameter(torch.randn(LATENTS, PIXELS))

        class MatMul(nn.Module):
            def __init__(self):
                super().__init__()
                self.weight = weight

            def forward(self, z):
                return z @ self.weight

        return MatMul()

    class Convolutional(nn.Module):  # a first consumer that is not linear
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(1, 2, 3, padding=1)
            self.out = nn.Linear(2 * LATENTS, PIXELS)

        def forward(self, z):
            h = self.conv(z.reshape(-1, 1, LATENTS)).reshape(z.shape[:-1] + (2 * LATENTS,))
            return self.out(torch.tanh(h))

    return Convolutional()


def vae(decoder: nn.Module):
    encoder = nn.Linear(PIXELS, LATENTS)

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Bernoulli(0.3 * torch.ones(LATENTS)).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Bernoulli(logits=encoder(x)).to_event(1))

    return model, guide, list(encoder.parameters()) + list(decoder.parameters())


def assert_absorption_changes_nothing(model, guide, params, x, seed: int, **options) -> None:
    """``absorb_linear`` on and off give the same gradients for the same sample."""
    grads = {}
    for absorb in (True, False):
        pyro.set_rng_seed(seed)
        elbo = TraceGO_ELBO(absorb_linear=absorb, **options)
        loss = elbo.differentiable_loss(model, guide, x)
        grads[absorb] = torch.autograd.grad(loss, params)
    for on, off in zip(grads[True], grads[False], strict=True):
        torch.testing.assert_close(on, off, rtol=1e-4, atol=1e-5)


@pytest.fixture
def replayed(monkeypatch) -> None:
    """Replays even where the recorded linear outputs would give every changing term."""
    monkeypatch.setattr(perturbation.PerturbationReplay, "_recorded_plan", lambda self: None)


@pytest.fixture
def stacked(monkeypatch) -> None:
    """Evaluates the recorded terms over the whole stack even where the closed form of
    :mod:`pyro_go.infer.closed_form_deltas` applies."""
    monkeypatch.setattr(perturbation, "closed_form_deltas", lambda *args: None)


@pytest.fixture
def closed_forms(monkeypatch) -> list[bool]:
    """Whether each estimate's ``Δ`` came from :func:`closed_form_deltas`."""
    served: list[bool] = []
    original = perturbation.closed_form_deltas

    def spy(*args):
        deltas = original(*args)
        served.append(deltas is not None)
        return deltas

    monkeypatch.setattr(perturbation, "closed_form_deltas", spy)
    return served


@pytest.mark.parametrize(
    "kind, expected_hits",
    [("linear", []), ("matmul", []), ("nonlinear", [1]), ("convolutional", [0])],
)
def test_absorption_on_and_off_give_the_same_gradients(kind, expected_hits, hits):
    """A linear first consumer needs no replay (its output was recorded on the provenance
    run); a nonlinear one absorbs the flips in a replay; a convolution reads the stack."""
    model, guide, params = vae(make_decoder(kind))
    x = (torch.rand(5, PIXELS) > 0.5).float()
    assert_absorption_changes_nothing(model, guide, params, x, seed=7)
    assert hits == expected_hits


@pytest.mark.parametrize("kind", ["linear", "matmul"])
def test_replay_and_recorded_outputs_give_the_same_gradients(kind, hits, replayed):
    model, guide, params = vae(make_decoder(kind))
    x = (torch.rand(5, PIXELS) > 0.5).float()
    assert_absorption_changes_nothing(model, guide, params, x, seed=7)
    assert hits == [1]


@pytest.mark.parametrize("kind", ["linear", "matmul"])
def test_recorded_stack_gives_the_closed_form_gradients(kind, hits, stacked):
    """The recorded terms evaluated over the whole stack, as where the closed form does
    not apply: no replay, the same gradients."""
    model, guide, params = vae(make_decoder(kind))
    x = (torch.rand(5, PIXELS) > 0.5).float()
    assert_absorption_changes_nothing(model, guide, params, x, seed=7)
    assert hits == []


@pytest.mark.parametrize(
    "handler, closed",
    [
        ("none", True),
        ("scale", True),
        ("particles", True),
        ("per-slice scale", False),
        ("mask", False),
        ("weights beyond exp", False),
    ],
)
def test_closed_form_deltas_give_the_dense_gradients(handler, closed, closed_forms):
    """``Δ`` in closed form, scaled by a number or over vectorised particles, gives the
    dense replay's gradients; a per-slice scale, a mask or weights whose ``e^W``
    overflows leave the closed form (for the stack or the dense replay), which gives
    them too."""
    decoder = make_decoder("linear")
    model, guide, params = vae(decoder)
    options = {}
    if handler == "weights beyond exp":
        with torch.no_grad():
            decoder.weight.mul_(300.0)
    elif handler == "scale":
        model, guide = poutine.scale(model, 2.5), poutine.scale(guide, 2.5)
    elif handler == "per-slice scale":
        scale = torch.arange(1.0, 6.0)
        model, guide = poutine.scale(model, scale), poutine.scale(guide, scale)
    elif handler == "mask":
        mask = torch.tensor([True, False, True, True, False])
        model, guide = poutine.mask(model, mask=mask), poutine.mask(guide, mask=mask)
    elif handler == "particles":
        options = {"num_particles": 3, "vectorize_particles": True, "max_plate_nesting": 1}
    x = (torch.rand(5, PIXELS) > 0.5).float()
    assert_absorption_changes_nothing(model, guide, params, x, seed=7, **options)
    assert closed_forms == [closed]


def test_one_coordinate_structure_matches_the_stacked_values():
    """The structure a site reports equals what its dense entries show."""
    from pyro_go.distributions import get_go_rule
    from pyro_go.infer.perturbation import DiscreteLeafSite

    base = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    fn = dist.Bernoulli(0.5 * torch.ones(2, 3)).to_event(1)
    frame = pyro.poutine.indep_messenger.CondIndepStackFrame("data", -1, 2, 0)
    site = DiscreteLeafSite("z", get_go_rule(fn), {"fn": fn}, base, (frame,))
    assert site.perturbs_last_dim_only
    stacked = site.perturbed_values(0, 3)
    index, delta, alternative = site.coordinate_changes(0, 3)
    assert alternative.tolist() == [0, 0, 0]
    assert index.tolist() == [0, 1, 2]
    torch.testing.assert_close(delta, torch.tensor([[1.0, -1.0], [-1.0, 1.0], [-1.0, 1.0]]))
    for j in range(3):
        expected = base.clone()
        expected[:, index[j]] += delta[j]
        torch.testing.assert_close(stacked[j], expected)
    structure = linear_absorption.SparseStack(base, index, delta)
    deferred = DeferredTensor(stacked.shape, base, lambda: stacked, structure)
    weight = torch.randn(4, 3)
    with linear_absorption.AbsorbLinear() as mode:
        fast = torch.nn.functional.linear(deferred, weight)
    assert mode.hits == 1
    assert deferred._dense is None, "the linear layer read the dense stack"
    torch.testing.assert_close(fast.dense(), torch.nn.functional.linear(stacked, weight))


@pytest.mark.parametrize("use", ["scaled", "in-place", "probs", "two-sites"])
def test_logits_not_straight_from_a_recorded_layer_are_replayed(use, hits):
    """Where the likelihood's logits are not the linear layer's output as recorded
    (changed after it, in place or not, or given as probabilities), or a term depends on
    two sites, the replay gives the differences; the gradients stay those of the dense
    stack."""
    torch.manual_seed(4)
    decoder, other = make_decoder("linear"), nn.Linear(LATENTS, PIXELS)
    _, guide, params = vae(decoder)

    def model(x):
        pyro.module("decoder", decoder)
        pyro.module("other", other)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Bernoulli(0.3 * torch.ones(LATENTS)).to_event(1))
            logits = decoder(z)
            if use == "scaled":
                logits = 0.5 * logits
            elif use == "in-place":
                logits.mul_(0.5)
            elif use == "two-sites":
                w = pyro.sample("w", dist.Bernoulli(0.6 * torch.ones(LATENTS)).to_event(1))
                logits = logits + other(w)
            fn = dist.Bernoulli(probs=torch.sigmoid(logits)) if use == "probs" else None
            fn = dist.Bernoulli(logits=logits) if fn is None else fn
            pyro.sample("x", fn.to_event(1), obs=x)

    encoder = nn.Linear(PIXELS, LATENTS)

    def two_site_guide(x):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Bernoulli(logits=encoder(x)).to_event(1))
            pyro.sample("w", dist.Bernoulli(0.4 * torch.ones(LATENTS)).to_event(1))

    x = (torch.rand(5, PIXELS) > 0.5).float()
    if use == "two-sites":
        guide = two_site_guide
        params = [*encoder.parameters(), *decoder.parameters(), *other.parameters()]
    assert_absorption_changes_nothing(model, guide, params, x, seed=7)
    assert len(hits) == 1


VARIABLES, CATEGORIES = 3, 4


def one_hot_vae(flatten):
    encoder = nn.Linear(PIXELS, VARIABLES * CATEGORIES)
    torch.manual_seed(2)
    decoder = nn.Linear(VARIABLES * CATEGORIES, PIXELS)
    prior = torch.full((VARIABLES, CATEGORIES), 1.0 / CATEGORIES)

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.OneHotCategorical(prior).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(flatten(z))).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", encoder)
        logits = encoder(x).reshape(x.shape[:-1] + (VARIABLES, CATEGORIES))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.OneHotCategorical(logits=logits).to_event(1))

    return model, guide, list(encoder.parameters()) + list(decoder.parameters())


@pytest.mark.parametrize(
    "flatten",
    [
        lambda z: z.flatten(-2),
        lambda z: z.reshape(z.shape[:-2] + (VARIABLES * CATEGORIES,)),
        lambda z: z.view(z.shape[:-2] + (-1,)),
    ],
    ids=["flatten", "reshape", "view"],
)
def test_one_hot_categorical_absorbs_two_columns(flatten, hits):
    """A one-hot category change is the difference of two columns of W."""
    model, guide, params = one_hot_vae(flatten)
    x = (torch.rand(5, PIXELS) > 0.5).float()
    assert_absorption_changes_nothing(model, guide, params, x, seed=3)
    assert hits == [1]


@pytest.mark.parametrize("closed", [True, False], ids=["closed-form-deltas", "stack"])
@pytest.mark.parametrize("kind", ["linear", "matmul"])
def test_linear_consumer_takes_the_closed_form_likelihood(kind, closed, monkeypatch):
    """The flipped likelihood is the closed form's, with ``Δ`` in closed form or over
    the recorded stack; the eager reduction serves the first step of a shape."""
    reductions = []
    original = linear_absorption._flip_differences

    def spy(*args, **kwargs):
        reductions.append(args[4].shape)  # change: [entries, *slices]
        return original(*args, **kwargs)

    monkeypatch.setattr(linear_absorption, "_flip_differences", spy)
    if not closed:
        monkeypatch.setattr(perturbation, "closed_form_deltas", lambda *args: None)
    model, guide, _ = vae(make_decoder(kind))
    TraceGO_ELBO().differentiable_loss(model, guide, (torch.rand(5, PIXELS) > 0.5).float())
    # all LATENTS coordinates (plus the base entry on the stack) in one reduction
    assert reductions == [(LATENTS if closed else LATENTS + 1, 5)]


@pytest.mark.parametrize(
    "weight_scale, group",
    [(1.0, 8), (5.0, 4), (10.0, 2), (20.0, 1), (300.0, None)],
    ids=["groups-of-8", "groups-of-4", "groups-of-2", "per-element", "beyond-exp"],
)
@pytest.mark.parametrize("event", [True, False], ids=["event", "elementwise"])
@pytest.mark.parametrize("block_elements", [2**17, 200], ids=["one-block", "two-blocks"])
def test_shifted_bernoulli_likelihood_matches_log_prob(
    weight_scale, group, event, block_elements, monkeypatch
):
    """The flipped likelihood of a replay equals ``Bernoulli(h ± W[:, i]).log_prob``: in
    closed form with products of 8, 4, 2 or 1 factors as the weights grow, in one block of
    entries or several, with a pixel count that is no multiple of 8; from the dense
    logits when ``e^W`` would overflow float32."""
    monkeypatch.setattr(linear_absorption, "BLOCK_ELEMENTS", block_elements)
    torch.manual_seed(3)
    pixels = PIXELS + 3
    base = 3.0 * torch.randn(5, pixels)
    columns = weight_scale * torch.randn(LATENTS, pixels)
    x = (torch.rand(5, pixels) > 0.5).float()
    index = torch.tensor([0, LATENTS - 1, 2])
    change = torch.tensor([1.0, -1.0, 0.0, 1.0, -1.0]).expand(3, 5)
    logits = base + change.unsqueeze(-1) * columns[index].unsqueeze(1)
    largest = float(columns[index].abs().max())
    if group is not None:
        assert linear_absorption.product_group(largest) == group, "scale misses the branch"
    record = linear_absorption.ShiftedOutput(base, change, index, columns)
    deferred = DeferredTensor(logits.shape, logits, lambda: logits, record)
    # as in a replay: validating the parameters would read them
    with pyro.validation_enabled(False), linear_absorption.AbsorbLinear():
        fn = dist.Bernoulli(logits=deferred)
        fn = fn.to_event(1) if event else fn
        fn = fn.expand(fn.batch_shape)  # what a plate does
    closed_form = linear_absorption.shifted_bernoulli_log_prob(fn, x)
    assert (closed_form is None) == (group is None), "closed form used beyond exp's range"
    assert deferred._dense is None, "the closed form read the dense logits"
    replayed = perturbation.PerturbationReplay._site_log_prob(fn, x)
    expected = dist.Bernoulli(logits=logits)
    expected = expected.to_event(1) if event else expected
    torch.testing.assert_close(replayed, expected.log_prob(x), rtol=1e-5, atol=2e-4)


@pytest.fixture
def densified(monkeypatch) -> list:
    """The structures of the deferred tensors whose dense value was computed."""
    recorded = []
    original = DeferredTensor.dense

    def dense(self):
        if self._dense is None:
            recorded.append(type(self.structure).__name__)
        return original(self)

    monkeypatch.setattr(DeferredTensor, "dense", dense)
    return recorded


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("linear", []),
        ("matmul", []),
        ("nonlinear", ["ShiftedOutput"]),  # tanh reads the first layer's output
        ("convolutional", ["SparseStack"]),  # the convolution reads the stack itself
    ],
)
def test_only_non_linear_consumers_compute_dense_stacks(kind, expected, densified):
    """The linear VAE's replay never forms ``[n, batch, latents]`` or ``[n, batch, pixels]``;
    other first consumers get the dense values (and the same gradients, above)."""
    model, guide, _ = vae(make_decoder(kind))
    TraceGO_ELBO().differentiable_loss(model, guide, (torch.rand(5, PIXELS) > 0.5).float())
    assert densified == expected


@pytest.mark.parametrize("kind, replays", [("linear", 2), ("nonlinear", LATENTS + 1)])
def test_auto_chunks_grow_once_a_replay_reads_no_deferred_value(
    kind, replays, hits, replayed, monkeypatch
):
    """With ``chunk_size="auto"`` a replay that formed nothing dense lets the rest of the
    stack go in one replay; one that did keeps the chunks small.  Same gradients."""
    # one perturbed-value entry is [5, LATENTS]: "auto" chunks of one entry
    monkeypatch.setattr(perturbation, "AUTO_CHUNK_ELEMENTS", 5 * LATENTS)
    model, guide, params = vae(make_decoder(kind))
    x = (torch.rand(5, PIXELS) > 0.5).float()
    grads = {}
    for chunk_size in ("auto", None):
        pyro.set_rng_seed(7)
        loss = TraceGO_ELBO(chunk_size=chunk_size).differentiable_loss(model, guide, x)
        grads[chunk_size] = torch.autograd.grad(loss, params)
    for auto, whole in zip(grads["auto"], grads[None], strict=True):
        torch.testing.assert_close(auto, whole, rtol=1e-4, atol=1e-5)
    assert len(hits) == replays + 1
    # the next step of the same ELBO starts with the whole stack if the last stayed deferred
    hits.clear()
    elbo = TraceGO_ELBO()
    for _ in range(2):
        elbo.differentiable_loss(model, guide, x)
    assert len(hits) == (replays + 1 if kind == "linear" else 2 * replays)


def test_a_shifted_output_read_twice_is_closed_form_once_and_dense_once(densified):
    """The decoder's output feeds the Bernoulli likelihood (closed form) and a penalty
    (which reads the dense logits); both terms get the right differences."""
    decoder = make_decoder("linear")
    _, guide, params = vae(decoder)

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Bernoulli(0.3 * torch.ones(LATENTS)).to_event(1))
            logits = decoder(z)
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)
            pyro.factor("penalty", -0.1 * logits.pow(2).sum(-1))

    x = (torch.rand(5, PIXELS) > 0.5).float()
    assert_absorption_changes_nothing(model, guide, params, x, seed=7)
    assert densified == ["ShiftedOutput"]
