"""The int8 serving path: torch dynamic quantisation of a trained model's dense layers, and
int8 tables.

``model.quantize()`` (``serving.quantization = "int8"``) calls into here. Each kind quantises
what pays at the service's shape, one user per call (measured in benchmarks/RESULTS.md,
``quantization``): the transformers (the two-tower's text encoder, which a request runs for a
new user's profile text, and SASRec's blocks) and EASE's items x items weights. Small layers
and tables stay float32: at one row per call, int8's per-call quantisation of the input costs
more than the int8 product saves (measured here: a 320-256-64 MLP 37 -> 61 us, a 1682 x 65
table product 12 -> 34 us). The building blocks:

- ``int8_layers(module)``: every ``nn.Linear`` inside ``module`` becomes a dynamically
  quantised one (int8 weights, one scale per output row; activations quantised per call), run
  by fbgemm's int8 kernels on the CPU.
- ``int8_rows(weights)``: a table (EASE's item-item weights) as int8 values and one scale per
  row (symmetric, as above), in numpy, for code that sums a few rows rather than multiplying.

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


def int8_rows(weights: np.ndarray, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, dim)`` float weights as int8 ``values`` and one ``scale`` per row, symmetric
    (zero point 0) as ``int8_layers`` quantises weights: ``values * scale[:, None]`` is the
    weights to within half a scale step, and a row of small values keeps its precision.
    Plain arrays, built ``chunk`` rows at a time so that a large table never needs more than
    its own size again while it is converted; summing a few int8 rows is the fast path for
    sparse inputs."""
    weights = np.asarray(weights)
    values = np.empty(weights.shape, dtype=np.int8)
    scale = np.empty(weights.shape[0], dtype=np.float32)
    for start in range(0, weights.shape[0], chunk):
        part = weights[start : start + chunk].astype(np.float32)
        step = np.abs(part).max(axis=1) / 127.0
        step[step == 0] = 1.0  # an all-zero row: any scale reproduces it
        values[start : start + chunk] = np.clip(np.rint(part / step[:, None]), -127, 127)
        scale[start : start + chunk] = step
    return values, scale
