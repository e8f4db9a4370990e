"""The DEF and DLDA builders of ``pyro_go.contrib`` (GO paper section 7.4, appendix K)."""

import math

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO, TraceGraph_ELBO

from pyro_go import TraceGO_ELBO
from pyro_go.contrib import DeepLDA, PoissonGammaDEF, pixel_counts
from pyro_go.contrib.deep_exponential_family import FlooredGamma, floor_straight_through

V, N = 12, 8


def small_def(**kwargs) -> PoissonGammaDEF:
    return PoissonGammaDEF(pixels=V, layers=(6, 3), **kwargs)


def small_dlda(**kwargs) -> DeepLDA:
    return DeepLDA(pixels=V, layers=(6, 4, 3), hidden=(8,), **kwargs)


BUILDERS = {
    "def": small_def,
    "dlda": small_dlda,
    "dlda-param": lambda **kw: small_dlda(phi="param", **kw),
}


def synthetic_counts(num: int = N, seed: int = 0) -> torch.Tensor:
    """Counts from a two-factor Poisson model (a tiny stand-in for pixel counts)."""
    generator = torch.Generator().manual_seed(seed)
    factors = torch.rand(2, V, generator=generator) * 4
    weights = torch.rand(num, 2, generator=generator)
    return torch.poisson(weights @ factors, generator=generator)


def guide_and_model_traces(module, x, **kwargs):
    guide_trace = poutine.trace(module.guide).get_trace(x, **kwargs)
    model_trace = poutine.trace(poutine.replay(module.model, trace=guide_trace)).get_trace(
        x, **kwargs
    )
    return guide_trace, model_trace


def test_def_site_shapes():
    guide_trace, model_trace = guide_and_model_traces(small_def(), synthetic_counts())
    shapes = {name: tuple(guide_trace.nodes[name]["value"].shape) for name in ("w1", "w2")}
    assert shapes == {"w1": (6, V), "w2": (3, 6)}
    assert guide_trace.nodes["z1"]["value"].shape == (N, 6)
    assert guide_trace.nodes["z2"]["value"].shape == (N, 3)
    assert model_trace.nodes["x"]["fn"].event_shape == (V,)
    assert model_trace.nodes["x"]["fn"].batch_shape == (N,)


def test_dlda_site_shapes_and_topics():
    module = small_dlda()
    guide_trace, model_trace = guide_and_model_traces(module, synthetic_counts())
    for name, shape in {"phi1": (6, V), "phi2": (4, 6), "phi3": (3, 4)}.items():
        value = guide_trace.nodes[name]["value"]
        assert value.shape == shape
        assert torch.allclose(value.sum(-1), torch.ones(shape[0]))
    for name, shape in {"z1": (N, 6), "z2": (N, 4), "z3": (N, 3)}.items():
        assert guide_trace.nodes[name]["value"].shape == shape
    for name in ("c2", "c3", "c4"):
        assert guide_trace.nodes[name]["value"].shape == (N,)
    assert module.dictionary(2).shape == (4, V)
    assert torch.allclose(module.dictionary(3).sum(-1), torch.ones(3))
    assert module.reconstruct(synthetic_counts()).shape == (N, V)


def test_point_estimated_topics_have_no_sites():
    guide_trace, _ = guide_and_model_traces(small_dlda(phi="param"), synthetic_counts())
    assert not any(name.startswith("phi") for name in guide_trace.nodes)


def test_appendix_k_thresholds():
    module = small_dlda()
    # tiny shapes: without the floor most float32 samples would be far below T_z
    fn = FlooredGamma(torch.full((1000,), 0.01, requires_grad=True), torch.ones(1000), 1e-5)
    sample = fn.rsample()
    assert sample.min() >= 1e-5
    sample.sum().backward()  # straight-through: the gradient reaches the shape
    assert fn.concentration.grad is not None
    _, model_trace = guide_and_model_traces(module, synthetic_counts())
    for name in ("z1", "z2"):
        shape = model_trace.nodes[name]["fn"].base_dist.concentration
        assert shape.min().item() >= module.min_shape - 1e-7  # Φ z ≥ T_α = 0.2
    value = torch.tensor([1e-9, 0.5], requires_grad=True)
    floored = floor_straight_through(value, 1e-5)
    floored.sum().backward()
    assert floored.tolist() == pytest.approx([1e-5, 0.5]) and value.grad.tolist() == [1.0, 1.0]


@pytest.mark.parametrize("builder", sorted(BUILDERS))
@pytest.mark.parametrize("elbo", [TraceGO_ELBO, Trace_ELBO], ids=["go", "trace"])
def test_one_svi_step_gives_a_finite_loss(builder, elbo):
    module = BUILDERS[builder]()
    svi = SVI(module.model, module.guide, pyro.optim.Adam(module.optim_args()), elbo())
    loss = svi.step(synthetic_counts())
    assert math.isfinite(loss)
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("builder", ["def", "dlda"])
def test_score_function_guide_with_tracegraph(builder):
    module = BUILDERS[builder](reparameterized=False)
    svi = SVI(module.model, module.guide, pyro.optim.Adam({"lr": 1e-3}), TraceGraph_ELBO())
    assert math.isfinite(svi.step(synthetic_counts()))
    guide_trace = poutine.trace(module.guide).get_trace(synthetic_counts())
    assert not guide_trace.nodes["z1"]["fn"].has_rsample
    assert not guide_trace.nodes["z1"]["value"].requires_grad


def test_subsampled_plate_scales_local_terms():
    module = small_def(subsample_size=4)
    x = synthetic_counts()
    guide_trace, model_trace = guide_and_model_traces(module, x)
    assert guide_trace.nodes["z1"]["value"].shape == (4, 6)
    assert model_trace.nodes["x"]["scale"] == pytest.approx(N / 4)
    # a minibatch of a larger data set
    guide_trace, model_trace = guide_and_model_traces(small_def(), x, num_data=10 * N)
    assert model_trace.nodes["x"]["scale"] == pytest.approx(10)
    assert math.isfinite(TraceGO_ELBO().loss(module.model, module.guide, x))


def test_optim_args_give_global_parameters_their_own_step():
    module = small_def()
    args = module.optim_args(local_lr=1e-3, global_lr=0.5)
    assert args("def.global_log_shape.0") == {"lr": 0.5}
    assert args("def.encoders.0.shape_head.weight") == {"lr": 1e-3}


@pytest.mark.parametrize("builder", ["def", "dlda"])
def test_elbo_improves_with_go(builder):
    module = BUILDERS[builder]()
    x = synthetic_counts(num=32)
    elbo = TraceGO_ELBO()
    svi = SVI(module.model, module.guide, pyro.optim.Adam(module.optim_args(1e-2, 5e-2)), elbo)

    def average_loss(num_samples=20):
        with torch.no_grad():
            return np.mean([elbo.loss(module.model, module.guide, x) for _ in range(num_samples)])

    before = average_loss()
    for _ in range(50):
        svi.step(x)
    assert average_loss() < before - 0.05 * abs(before)


def test_pixel_counts():
    images = np.array([[0, 128, 255]], dtype=np.uint8)
    assert pixel_counts(images).tolist() == [[0.0, 5.0, 10.0]]
    assert pixel_counts(np.array([[0.5]]), levels=4).tolist() == [[2.0]]
