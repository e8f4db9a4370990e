"""Deferred tensors compute their value once, when something reads it, and never show
a wrong one."""

import pytest
import torch

from pyro_go.ops.deferred import DeferredTensor, densify, structure_of


def deferred_arange(calls: list) -> DeferredTensor:
    def compute():
        calls.append(1)
        return torch.arange(6.0).reshape(2, 3)

    return DeferredTensor(torch.Size([2, 3]), torch.zeros(()), compute, "structure")


def test_metadata_is_free_and_the_value_is_computed_once():
    calls = []
    deferred = deferred_arange(calls)
    assert deferred.shape == (2, 3) and deferred.dtype == torch.float32
    assert structure_of(deferred) == "structure" and structure_of(torch.zeros(1)) is None
    assert calls == []
    torch.testing.assert_close(
        torch.nn.functional.softplus(deferred).sum(-1),
        torch.nn.functional.softplus(torch.arange(6.0).reshape(2, 3)).sum(-1),
    )
    assert (deferred * 2)[1, 2].item() == 10.0
    assert type(deferred + 1) is torch.Tensor
    assert deferred.tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    assert deferred.numpy().sum() == 15.0
    torch.testing.assert_close(densify(deferred), torch.arange(6.0).reshape(2, 3))
    assert calls == [1]


def test_a_value_of_the_wrong_shape_is_an_error():
    deferred = DeferredTensor(torch.Size([3]), torch.zeros(()), lambda: torch.zeros(4), None)
    with pytest.raises(RuntimeError, match="shape"):
        deferred + 1


@pytest.mark.parametrize("change", ["method", "out"])
def test_an_in_place_change_drops_the_structure(change):
    """After an in-place op the structure no longer describes the value, so fast paths
    must not read it (an in-place op on a replay's logits once gave wrong gradients)."""
    deferred = deferred_arange([])
    if change == "method":
        deferred.mul_(2)
        expected = 2 * torch.arange(6.0).reshape(2, 3)
    else:
        torch.mul(torch.ones(2, 3), 3, out=deferred)
        expected = torch.full((2, 3), 3.0)
    assert structure_of(deferred) is None
    torch.testing.assert_close(densify(deferred), expected)
    untouched = deferred_arange([])
    assert structure_of(untouched + 1) is None and structure_of(untouched) == "structure"
