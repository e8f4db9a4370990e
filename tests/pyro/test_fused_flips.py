"""The compiled flipped likelihood gives the eager path's values."""

import pyro
import pytest
import torch
from test_linear_absorption import PIXELS, make_decoder, vae

from pyro_go import TraceGO_ELBO
from pyro_go.infer import fused_flips, linear_absorption


def flipped_inputs(slices: tuple, batch: tuple, width: int, scale: float, transposed=False):
    """Logits and data ``[*batch, width]``, the columns of 5 entries (a transposed
    matrix's if ``transposed``) and their changes ``[5, *slices]``."""
    torch.manual_seed(0)
    h = 3.0 * torch.randn(batch + (width,))
    value = (torch.rand(batch + (width,)) < 0.5).float()
    chosen = scale * torch.randn(width, 5).t() if transposed else scale * torch.randn(5, width)
    change = torch.randint(-1, 2, (5,) + slices).float()
    return h, value, chosen, change


@pytest.fixture
def kernels(monkeypatch) -> fused_flips.CompiledReduction:
    """The compiled reduction as in a new process, restored afterwards."""
    fresh = fused_flips.CompiledReduction(linear_absorption._whole_flip_differences)
    monkeypatch.setattr(linear_absorption, "_compiled_differences", fresh)
    return fresh


@pytest.mark.parametrize(
    "slices, batch, group, transposed",
    [((7,), (7,), 8, False), ((3, 4), (4,), 2, False), ((7,), (7,), 8, True)],
    ids=["one-plate", "broadcast-plates-groups-of-2", "transposed-weight"],
)
def test_compiled_reduction_matches_eager(slices, batch, group, transposed, kernels):
    """Same values as :func:`_flip_differences`, with an event size that is no
    multiple of the group, logits broadcast over a plate they lack, and columns read
    from a transposed weight; a shape compiles on its second call."""
    h, value, chosen, change = flipped_inputs(slices, batch, PIXELS + 3, 1.0, transposed)
    assert kernels(h, value, chosen, change, group) is None
    compiled = kernels(h, value, chosen, change, group)
    assert compiled is not None, "torch.compile failed on this machine"
    tables = linear_absorption._flip_tables(chosen)
    eager = linear_absorption._flip_differences(h, value, chosen, tables, change, group)
    assert compiled.shape == eager.shape == (5,) + slices
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


def test_failed_compile_warns_and_leaves_the_eager_reduction(kernels, monkeypatch):
    def no_compiler(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", no_compiler)
    inputs = flipped_inputs((6,), (6,), width=PIXELS, scale=1.0)
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
        assert kernels(*inputs, 8) is None
    assert kernels.compiled is False


def test_shapes_beyond_the_kernel_limit_take_the_eager_reduction(kernels, monkeypatch):
    monkeypatch.setattr(fused_flips, "MAX_KERNELS", 0)
    inputs = flipped_inputs((6,), (6,), width=PIXELS, scale=1.0)
    for _ in range(3):
        assert kernels(*inputs, 8) is None
    assert not kernels.kernels


def test_compiled_likelihood_gives_the_same_gradients(kernels, monkeypatch):
    """``compile_likelihood`` on and off: same gradients for the same sample, and the
    compiled kernel is what the second step used."""
    calls = []

    def spy(*args):
        result = kernels(*args)
        calls.append(result is not None)
        return result

    monkeypatch.setattr(linear_absorption, "_compiled_differences", spy)
    model, guide, params = vae(make_decoder("linear"))
    x = (torch.rand(5, PIXELS) > 0.5).float()
    grads = {}
    for compiled in (True, False):
        elbo = TraceGO_ELBO(compile_likelihood=compiled)
        for _ in range(2):  # the compiled kernel takes over on the second step
            pyro.set_rng_seed(7)
            loss = elbo.differentiable_loss(model, guide, x)
        grads[compiled] = torch.autograd.grad(loss, params)
    assert calls == [False, True]
    for on, off in zip(grads[True], grads[False], strict=True):
        torch.testing.assert_close(on, off, rtol=1e-5, atol=1e-6)
