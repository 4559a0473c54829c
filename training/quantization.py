"""The int8 serving path: torch dynamic quantisation of a trained model's dense layers and of
its score tables.

``model.quantize()`` (``serving.quantization = "int8"``) calls into here. Two building blocks:

- ``int8_layers(module)``: every ``nn.Linear`` inside ``module`` becomes a dynamically
  quantised one (int8 weights, one scale per output row; activations quantised per call), run
  by fbgemm's int8 kernels on the CPU.
- ``int8_table(weights, bias)``: a score table (item vectors, EASE's item-item weights) held
  as the weight of such a layer, so ``scores = table(user_vectors)`` is one int8 matrix product
  instead of a float32 one, on a table a quarter of the size.

Why ``torch.ao.quantization.quantize_dynamic`` although torch marks it deprecated in favour of
torchao: measured here (torch 2.13 CPU, torchao 0.18), torchao's eager int8 configs ran the
MiniLM text encoder slower than float32 (dynamic int8: 1.4x slower; weight-only: 1.3x faster)
while ``quantize_dynamic`` ran it 3x faster; torchao's fast CPU path needs ``torch.compile``.
The deprecation warnings are silenced here, in the one place that calls it.

Quantised modules run on the CPU only, which is where the service runs.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

INT8 = "int8"


@contextmanager
def _quiet():
    # torch.ao warns on import and on every call (DeprecationWarning, and a UserWarning about
    # quantised tensor constructors); the decision and its measurement are in the docstring.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization is deprecated.*")
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*deprecated.*")
        warnings.filterwarnings("ignore", message=".*quantize_per_channel.*deprecated.*")
        yield


def int8_layers(module: nn.Module) -> nn.Module:
    """A copy of ``module`` (in eval mode, on the CPU) whose ``nn.Linear`` layers are int8."""
    with _quiet():
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        return quantize_dynamic(
            module.cpu().eval(), {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8
        )


def int8_table(weights: np.ndarray | torch.Tensor, bias=None) -> nn.Module:
    """``(rows, dim)`` weights as an int8 layer: ``layer(x) == x @ weights.T + bias``, to
    int8 rounding. One scale per row, so a row of small values keeps its precision."""
    weights = torch.as_tensor(np.asarray(weights, dtype=np.float32))
    layer = nn.Linear(weights.shape[1], weights.shape[0], bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(weights)
        if bias is not None:
            layer.bias.copy_(torch.as_tensor(np.asarray(bias, dtype=np.float32)))
    return int8_layers(nn.Sequential(layer))


@torch.inference_mode()
def apply(table: nn.Module, x: np.ndarray) -> np.ndarray:
    """``table(x)`` for a float32 ``(n, dim)`` array, as a float32 array."""
    return table(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()


def int8_bytes(module: nn.Module) -> int:
    """Bytes of a quantised module's packed weights and float parameters (what it holds)."""
    total = 0
    for _, value in module.state_dict().items():
        if isinstance(value, torch.Tensor):
            total += value.numel() * value.element_size()
        elif isinstance(value, tuple):  # packed params: (weight, bias)
            total += sum(v.numel() * v.element_size() for v in value if isinstance(v, torch.Tensor))
    return total
