"""The inference linear + tanh-GELU implementations are one function, and the choice is measured."""

import math

import pytest
import torch
import torch.nn.functional as F

from leader_kedro.student import kernels


def reference(x, weight, bias):
    """tanh-GELU of the projection in float64, from its textbook formula."""
    y = F.linear(x.double(), weight.double(), bias.double())
    return 0.5 * y * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (y + 0.044715 * y**3)))


@pytest.mark.parametrize("name", sorted(kernels.implementations()))
@pytest.mark.parametrize("rows", [1, 31, 32, 300])
def test_every_implementation_is_tanh_gelu(name, rows):
    gen = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 64, generator=gen) * 3
    weight, bias = torch.randn(300, 64, generator=gen) * 0.3, torch.randn(300, generator=gen)
    x[0, :4] = torch.tensor([0.0, 40.0, -40.0, 1e-3])  # far tails: exactly y and 0
    with torch.inference_mode():
        got = kernels.implementations()[name](x, weight, bias)
    expected = reference(x, weight, bias)
    assert got.dtype == torch.float32 and got.shape == (rows, 300)
    torch.testing.assert_close(got.double(), expected, atol=2e-5, rtol=2e-6)


def test_the_choice_is_the_fastest_measured_and_can_be_pinned():
    kernels.use(None)
    try:
        choice = kernels.chosen()
        assert set(choice.seconds) == set(kernels.implementations())
        assert choice.name == min(choice.seconds, key=choice.seconds.__getitem__)
        assert kernels.chosen() is choice  # measured once per process
        kernels.use("aten")
        assert kernels.chosen().name == "aten"
        with pytest.raises(ValueError, match=r"no linear \+ GELU implementation 'fast'"):
            kernels.use("fast")
    finally:
        kernels.use(None)


def test_linear_gelu_takes_the_pinned_implementation_from_measured_rows_on(monkeypatch):
    calls = []

    def spy(x, weight, bias):
        calls.append(x.shape[0])
        return kernels._aten(x, weight, bias)

    monkeypatch.setattr(kernels, "implementations", lambda: {"spy": spy})
    kernels.use("spy")
    try:
        w, b = torch.zeros(8, 4), torch.zeros(8)
        with torch.inference_mode():
            kernels.linear_gelu(torch.ones(kernels.MEASURED_ROWS - 1, 4), w, b)
            kernels.linear_gelu(torch.ones(kernels.MEASURED_ROWS, 4), w, b)
    finally:
        monkeypatch.undo()
        kernels.use(None)
    assert calls == [kernels.MEASURED_ROWS]
