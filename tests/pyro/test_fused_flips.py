"""The compiled flipped likelihood gives the eager path's values."""

import pyro
import pytest
import torch
from test_linear_absorption import PIXELS, make_decoder, vae

from pyro_go import TraceGO_ELBO
from pyro_go.infer import fused_flips, linear_absorption


def flipped_inputs(slices: tuple, batch: tuple, pixels: int, scale: float, transposed=False):
    """Logits and data ``[*batch, pixels]``, the columns of 5 entries (a transposed
    matrix's if ``transposed``) and their changes ``[5, *slices]``."""
    torch.manual_seed(0)
    h = 3.0 * torch.randn(batch + (pixels,))
    value = (torch.rand(batch + (pixels,)) < 0.5).float()
    chosen = scale * torch.randn(pixels, 5).t() if transposed else scale * torch.randn(5, pixels)
    change = torch.randint(-1, 2, (5,) + slices).float()
    return h, value, chosen, change


@pytest.fixture
def kernels(monkeypatch) -> fused_flips.CompiledReduction:
    """The compiled reduction as in a new process, restored afterwards."""
    fresh = fused_flips.CompiledReduction(linear_absorption._whole_flip_differences)
    monkeypatch.setattr(linear_absorption, "_compiled_differences", fresh)
    return fresh


#: an event size of two whole vectors and a ragged rest
EVENT = 2 * linear_absorption.VECTOR_WIDTH + 3


@pytest.mark.parametrize(
    "slices, batch, width, transposed",
    [((7,), (7,), 16, False), ((3, 4), (4,), 64, False), ((7,), (7,), 16, True)],
    ids=["one-plate-rows-of-16", "broadcast-plates-one-row", "transposed-weight"],
)
def test_compiled_reduction_matches_eager(slices, batch, width, transposed, kernels):
    """Same values as :func:`_flip_differences` (products of 8), with rows padded to a
    whole number of rows, logits broadcast over a plate they lack, and columns read
    from a transposed weight; a shape compiles on its second call."""
    h, value, chosen, change = flipped_inputs(slices, batch, EVENT, 1.0, transposed)
    assert kernels(h, value, chosen, change, width) is None
    compiled = kernels(h, value, chosen, change, width)
    assert compiled is not None, "torch.compile failed on this machine"
    tables = linear_absorption._flip_tables(chosen)
    eager = linear_absorption._flip_differences(h, value, chosen, tables, change, 8)
    assert compiled.shape == eager.shape == (5,) + slices
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


def test_the_row_width_reaches_the_compiled_graph():
    widths = []

    def recording(h, value, chosen, change, width):
        widths.append(width)
        return linear_absorption._whole_flip_differences(h, value, chosen, change, width)

    kernels = fused_flips.CompiledReduction(recording)
    inputs = flipped_inputs((7,), (7,), EVENT, 1.0)
    for _ in range(3):
        kernels(*inputs, 32)
    assert kernels.kernels, "torch.compile failed on this machine"
    assert set(widths) == {32}


@pytest.mark.parametrize(
    "weight, width",
    [(9.0, 16), (12.0, 32), (25.0, 64), (50.0, 128), (85.0, None)],
    ids=["rows-of-16", "rows-of-32", "rows-of-64", "one-row", "beyond-the-bound"],
)
def test_row_width_keeps_every_product_in_range(weight, width):
    """Rows 16, 32 or 64 wide, or one row (``P = 128``), as the weights' sums down the
    rows reach ``PRODUCT_LOG_BOUND``, and no width beyond it; the products of rows one
    step narrower leave float32's range, which the width chosen avoids."""
    torch.manual_seed(0)
    pixels = 128
    chosen = torch.full((3, pixels), weight)
    sigmoid = 0.9 + 0.1 * torch.rand(4, pixels)  # factors near e^W
    change = torch.ones(3, 4)
    assert linear_absorption.aligned_row_width(chosen) == width
    if width is None:
        return
    exact_tables = linear_absorption._flip_tables(chosen.double())
    exact = linear_absorption._whole_log_factors(sigmoid.double(), exact_tables, change, pixels)
    tables = linear_absorption._flip_tables(chosen)
    rows = linear_absorption._whole_log_factors(sigmoid, tables, change, width)
    torch.testing.assert_close(rows.double(), exact, rtol=1e-5, atol=0)
    if width > linear_absorption.VECTOR_WIDTH:
        narrower = linear_absorption._whole_log_factors(sigmoid, tables, change, width // 2)
        assert not narrower.isfinite().all()


def test_failed_compile_warns_and_leaves_the_eager_reduction(kernels, monkeypatch):
    def no_compiler(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", no_compiler)
    inputs = flipped_inputs((6,), (6,), pixels=PIXELS, scale=1.0)
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
        assert kernels(*inputs, 16) is None
    assert kernels.compiled is False


def test_shapes_beyond_the_kernel_limit_take_the_eager_reduction(kernels, monkeypatch):
    monkeypatch.setattr(fused_flips, "MAX_KERNELS", 0)
    inputs = flipped_inputs((6,), (6,), pixels=PIXELS, scale=1.0)
    for _ in range(3):
        assert kernels(*inputs, 16) is None
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
