"""Linear + tanh-GELU for inference: three exact implementations, the fastest chosen per process.

The feed-forward's first projection and its tanh-GELU are the largest single cost of the student's
inference. Which way of computing them is fastest depends on the CPU:

* ``onednn``: oneDNN's fused kernel (``torch.ops.mkldnn._linear_pointwise``). On the Intel
  (AMX) VM of issue 10's first measurements it beat the plain ops; on an AMD EPYC (AVX2) VM its
  GELU post-op ran at ~8 ns per element, 2.4x slower than ``sigmoid`` for the layer in isolation
  (about 10% inside the model, where memory traffic weighs more).
* ``sigmoid``: ``F.linear``, then tanh-GELU through the identity
  ``0.5 * (1 + tanh(z)) == sigmoid(2 z)``, in place: on that AMD VM PyTorch's sigmoid costs a
  quarter of its tanh (0.53 against 1.94 ms for 384k elements).
* ``aten``: ``F.gelu(F.linear(...), approximate="tanh")``, the plain ops (and the fallback).

All three are the same function: they agree with a float64 reference to ~5e-7 (as ``F.gelu``
itself does), far inside the 1e-5 of the equivalence tests. The first call on at least
``MEASURED_ROWS`` rows times each on a feed-forward-sized input and keeps the fastest for the
process (:func:`chosen`); smaller inputs take ``aten``, whose single operation costs least when
per-call overhead dominates (a one-patient request). Training keeps ``F.gelu`` with autograd.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from leader_kedro.torch_threads import torch_threads

#: From this many rows on, the measured choice is used (below it: ``aten``).
MEASURED_ROWS = 32
_C = math.sqrt(2.0 / math.pi)
_CUBIC = 0.044715
_TWO_C = torch.tensor(2.0 * _C)


def _aten(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return F.gelu(F.linear(x, weight, bias), approximate="tanh")


def _sigmoid(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    # gelu(y) = y * sigmoid(2c (y + a y^3)) = y * sigmoid(y (2c + 2ca y^2)): four passes over y,
    # in place after the first (no autograd)
    y = F.linear(x, weight, bias)
    u = torch.addcmul(_TWO_C, y, y, value=2.0 * _C * _CUBIC)
    return u.mul_(y).sigmoid_().mul_(y)


def _onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu", [], "tanh")


def implementations() -> dict[str, Callable[..., torch.Tensor]]:
    """The implementations this PyTorch build has, by name."""
    found: dict[str, Callable[..., torch.Tensor]] = {"aten": _aten, "sigmoid": _sigmoid}
    if torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        found["onednn"] = _onednn
    return found


@dataclass(frozen=True)
class Choice:
    name: str
    fn: Callable[..., torch.Tensor]
    seconds: dict[str, float]  # what it was chosen by: median seconds per call of each


_CHOICE: list[Choice] = []  # this process's choice, made on first use
_LOCK = threading.Lock()


def measure(rows: int = 512, d: int = 64, d_ff: int = 300, repeats: int = 7) -> dict[str, float]:
    """Median seconds per call of each implementation on a [rows, d] -> [rows, d_ff] input (one
    intra-op thread, no autograd); an implementation that fails here is left out."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(rows, d, generator=gen)
    weight, bias = torch.randn(d_ff, d, generator=gen) * 0.1, torch.randn(d_ff, generator=gen)
    found = implementations()
    times: dict[str, list[float]] = {}
    with torch_threads(1), torch.inference_mode():
        for name, fn in found.items():
            try:
                fn(x, weight, bias)  # warm-up (oneDNN builds its primitive here)
            except (RuntimeError, NotImplementedError):
                continue
            times[name] = []
        for _ in range(repeats):  # interleaved, so that a drifting machine favours none
            for name in times:
                t0 = time.perf_counter()
                found[name](x, weight, bias)
                times[name].append(time.perf_counter() - t0)
    return {name: sorted(ts)[len(ts) // 2] for name, ts in times.items()}


def chosen() -> Choice:
    """The implementation this process uses from ``MEASURED_ROWS`` rows on (measured once)."""
    with _LOCK:
        if not _CHOICE:
            seconds = measure()
            name = min(seconds, key=seconds.__getitem__)
            _CHOICE.append(Choice(name, implementations()[name], seconds))
    return _CHOICE[0]


def use(name: str | None) -> None:
    """Pin this process to one implementation (``None``: measure again on the next use)."""
    with _LOCK:
        _CHOICE.clear()
        if name is not None:
            found = implementations()
            if name not in found:
                raise ValueError(f"no linear + GELU implementation {name!r}; have {sorted(found)}")
            _CHOICE.append(Choice(name, found[name], {}))


def linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """GELU(tanh)(x W^T + b), for inference only (no autograd): see the module docstring."""
    if x.shape[0] < MEASURED_ROWS or not x.is_cpu or x.dtype != torch.float32:
        return _aten(x, weight, bias)
    return (_CHOICE[0] if _CHOICE else chosen()).fn(x, weight, bias)
