"""Inference with bfloat16 matrix products, on CPUs that multiply bfloat16 in hardware.

Sampling and scoring spend most of their time in the LSTM's matrix products: for the bundled
model, a 6144 × 640 product and a 512 × 1536 projection per character. A CPU with AMX or
AVX512-BF16 (Intel Xeon since Cooper Lake and Sapphire Rapids, AMD Zen 4) multiplies bfloat16
operands, accumulating in float32, several times faster than float32 ones when a batch of rows
shares the weights (measured on one core of a Xeon with AMX, one 6144 × 640 product: 1.3× at
batch 1, 2.8× at batch 16, 3.7× at batch 64; a CPU with AVX512-BF16 but no AMX was not measured).

What is rounded to bfloat16 (8 bits of mantissa): the operands of those products and, since
PyTorch's CPU products return their operands' type, each product's result, once. Everything
between the products stays float32 (the gate activations, the cell state, the softmax), so the
rounding does not build up along a poem. The bundled model scores tang_val at 5.84449 bpc this
way against 5.84447 in float32 (`bench/eval_bench.py`). Where bfloat16 is not native (AVX2-only
x86, most ARM) it is emulated and slower, so `auto` keeps float32 there.

Training never takes this path: it needs gradients, and its evaluations are float32 so that its
metrics and its choice of `best` do not depend on the CPU (train.py sets the model to "fp32").
The copies are refreshed when a weight is replaced or changed in place through autograd-visible
operations (an optimizer step, load_state_dict); a change through `.data` is not seen.
"""

from __future__ import annotations

from functools import cache

import torch
from torch import nn
from torch.nn import functional as F

# Fewer rows than this sharing the weights (one stream, a pair) take float32's path: at batch 1
# a product is bound by reading the weights, and the bundled model sampled 774 chars/s in float32
# against 758 with bfloat16 on a Xeon with AMX; 1.43x faster at 4 rows, 1.68x at 8, 1.5x at 16.
MIN_ROWS = 4

# One layer's bfloat16 copies: [W_ih W_hh] (4H, E + P), the summed biases (4H,) in float32, and
# the projection W_hr (P, H) or None.
Layer = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]


@cache
def native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AMX tiles or AVX512-BF16)."""
    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except (AttributeError, RuntimeError):  # a PyTorch build without these probes: assume not
        return False


def wants_bf16(precision: str, rows: int) -> bool:
    """Whether inference on CPU under `precision` ("auto", "fp32" or "bf16") with `rows` rows
    (streams, candidates, poems) per step uses bfloat16 products."""
    return rows >= MIN_ROWS and (precision == "bf16" or (precision == "auto" and native_bf16()))


class Bf16LSTM:
    """nn.LSTM's forward for inference (no dropout, no gradients) with bfloat16 copies of its
    weight matrices, made again whenever a weight changes: the parameters themselves (kept, so
    that a freed tensor's address cannot pass for its successor's) and their version counters,
    which in-place updates advance, are compared at every call, which costs microseconds."""

    def __init__(self) -> None:
        self._params: list[torch.Tensor] = []
        self._versions: list[int] = []
        self._layers: list[Layer] = []

    def _weights(self, lstm: nn.LSTM) -> list[Layer]:
        params = list(lstm.parameters())
        versions = [p._version for p in params]
        same = len(params) == len(self._params) and all(a is b for a, b in zip(params, self._params))
        if not same or versions != self._versions:
            self._layers = []
            for layer in range(lstm.num_layers):
                get = lambda name: getattr(lstm, f"{name}_l{layer}").detach()  # noqa: E731
                w_hr = get("weight_hr").to(torch.bfloat16) if lstm.proj_size else None
                # [W_ih W_hh]: one product of [x_t h] per step, the input's share included
                # (precomputing it for all T steps at once writes a (T, B, 4H) float32 tensor
                # out to memory and back, which cost more than it saved).
                w = torch.cat([get("weight_ih"), get("weight_hh")], dim=1).to(torch.bfloat16)
                self._layers.append((w, get("bias_ih") + get("bias_hh"), w_hr))
            self._params, self._versions = params, versions
        return self._layers

    def __call__(self, lstm: nn.LSTM, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
                 ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """`lstm`'s output for x (T, B, E) float32 from (h (L, B, P), c (L, B, H)):
        outputs (T, B, P) and the state after the last step."""
        # Sampling turns oneDNN off for nn.LSTM's sake (model.stepwise); bfloat16 products need
        # it: without it they take a generic kernel several times slower than float32.
        previous = torch.backends.mkldnn.enabled
        torch.backends.mkldnn.enabled = True
        try:
            return self._forward(self._weights(lstm), x, state)
        finally:
            torch.backends.mkldnn.enabled = previous

    @staticmethod
    def _forward(layers: list[Layer], x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
                 ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        hs, cs = [], []
        for layer, (w, bias, w_hr) in enumerate(layers):
            h, c = state[0][layer], state[1][layer]  # (B, P), (B, H)
            inputs = x.to(torch.bfloat16)
            outputs = []
            for t in range(x.size(0)):
                xh = torch.cat([inputs[t], h.to(torch.bfloat16)], dim=1)  # (B, E + P)
                gates = F.linear(xh, w).float() + bias  # (B, 4H)
                i, f, g, o = gates.chunk(4, dim=1)  # nn.LSTM's gate order
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
                if w_hr is not None:
                    h = F.linear(h.to(torch.bfloat16), w_hr).float()
                outputs.append(h)
            x = torch.stack(outputs)
            hs.append(h)
            cs.append(c)
        return x, (torch.stack(hs), torch.stack(cs))
