"""Faster inference on a CPU: the LSTM's (or GRU's) and the adaptive softmax's matrix products
done with bfloat16 or int8 copies of their weights (and, for the gates, int8 activations: w8a8).

Sampling and scoring spend most of their time in matrix products: for the bundled model, per
character, a 6144 × 640 product for the LSTM's gates, a 512 × 1536 projection, and the softmax's
1162 × 512 first level (head and cluster projections together). Two things bound them:

- One row (a poem written alone) is bound by reading the weights: 15.7 MB of float32 gates per
  character. int8 copies (one scale per output row) read a quarter of that; PyTorch's
  weight-only int8 kernel multiplies them with bfloat16 activations. Measured on one core of a
  Xeon with AMX, the gates' product: 222 µs against 587 in float32 at 1 row, 401 against 1169
  at 4 rows; from 5 rows on it is slower than bfloat16.
- Many rows (a batch of poems, candidates, a scored file) are bound by arithmetic, which a CPU
  with AMX or AVX512-BF16 (Intel Xeon since Cooper Lake and Sapphire Rapids, AMD Zen 4) does
  several times faster in bfloat16, from copies laid out once in oneDNN's blocked format (same
  product at 16 rows: 414 µs against 1,677 in float32; see _packed_bf16).

So `auto` takes int8 up to INT8_MAX_ROWS rows, and bf16 above on CPUs with native bfloat16. The
int8 kernel needs no bfloat16 arithmetic (it widens the activations to float32): with PyTorch's
AVX2 kernels (ATEN_CPU_CAPABILITY=avx2, standing in for a CPU without AVX-512), the gates'
product took 325 µs against 588 in float32 at 1 row, 697 against 1,175 at 4, and 2,738 against
1,807 at 16. It is taken on x86 CPUs with AVX2 or AVX-512 (int8_fast), not elsewhere, where it
was never measured.

Above INT8_MAX_ROWS on an x86 CPU without native bfloat16 (most laptops and desktops: Intel's
client CPUs, AMD before Zen 4), where bfloat16 is emulated and slower than float32, `auto` takes
**w8a8** for the gates: int8 weights times activations quantized to 8 bits at each call, in
FBGEMM's integer kernels (PyTorch's dynamic quantization). Gates at 16 rows, one core, FBGEMM
and PyTorch capped at AVX2 (FBGEMM_ENABLE_INSTRUCTIONS=AVX2): 978 µs against 2,470 in float32;
at 64 rows 3,251 against 6,592. One scale for a whole activation matrix loses little on the
gates' input ([x_t h]: +0.0004 bpc, below) but 0.015 bpc on the projection's (the cell's
output o·tanh(c), mostly near 0, where 7 bits over its range are coarse), so the projection and
the softmax stay float32 under w8a8. `bf16`, `int8` and `w8a8` ask for one path at every batch
size (for measuring; int8 is slow for big batches).

What is rounded: the products' operands (bfloat16: 8 bits of mantissa; int8 weights: 1/254 of a
row's largest weight; w8a8's activations: 1/127 of the matrix's range) and each product's
result, once. Everything between the products stays
float32 (the gate activations, the cell state, the log-softmax), so the rounding does not build
up along a poem. The bundled model on tang_val, read poem by poem (`bench/precision_bpc.py`):
5.84447 bpc in float32; 5.84449 with bf16 and 5.84409 with int8 as `eval` scores (the LSTM's
copies), 5.84458 and 5.84497 from the whole distribution sampling draws from (the softmax's
copies too); w8a8 5.84487 and 5.84478 (FBGEMM's AVX512-VNNI kernels), 5.84482 and 5.84477
(its AVX2 ones).

Training never takes these paths: they need no gradients, and training's evaluations are float32
so that its metrics and its choice of `best` do not depend on the CPU (train.py sets "fp32").
The copies are made again when a weight is replaced, given new storage or changed in place
through autograd-visible operations (an optimizer step, load_state_dict); a change made in place
through `.data` is not seen (see _version).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from contextlib import contextmanager
from functools import cache

import torch
from torch import nn
from torch.nn import functional as F

from poetgen.lm.held import Hold

# Up to this many rows sharing the weights, `auto` reads int8 weights (bound by reading them);
# above, bfloat16 ones (bound by arithmetic). Free sampling with the bundled model, one core,
# chars/s with int8 against bfloat16: 2,016 / 1,501 at 2 rows, 3,384 / 2,884 at 4, 3,168 /
# 3,574 at 5.
INT8_MAX_ROWS = 4

# PyTorch's weight-only int8 kernel (torch._weight_int8pack_mm, the one torchao uses on CPU)
# reads the inner dimension in blocks of 16: widths 16, 32, 48, 64 gave the right products,
# 20, 24, 40 crashed the process. A narrower or ragged matrix keeps a bfloat16 copy instead
# (float32 on a CPU without native bfloat16).
INT8_BLOCK = 16


@cache
def native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AMX tiles or AVX512-BF16)."""
    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except (AttributeError, RuntimeError):  # a PyTorch build without these probes: assume not
        return False


def product_kind(precision: str, rows: int) -> str:
    """The weights a CPU product of `rows` rows uses under `precision` ("auto", "fp32", "bf16",
    "int8" or "w8a8"): one of the last four."""
    if precision != "auto":
        return precision
    if rows <= INT8_MAX_ROWS and int8_fast():
        return "int8"
    if native_bf16():
        return "bf16"
    return "w8a8" if x86_simd() and w8a8_kernel() else "fp32"


@cache
def int8_kernel() -> bool:
    """Whether this PyTorch build has the weight-only int8 kernel on CPU; without it, int8
    copies are bfloat16 (or float32) ones."""
    try:
        torch._weight_int8pack_mm(torch.zeros(1, INT8_BLOCK, dtype=torch.bfloat16),
                                  torch.zeros(1, INT8_BLOCK, dtype=torch.int8),
                                  torch.ones(1, dtype=torch.bfloat16))
        return True
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


@cache
def x86_simd() -> bool:
    """Whether this is an x86 CPU with AVX2 or AVX-512, as PyTorch's kernels see it: where both
    integer paths were measured."""
    try:
        return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    except (AttributeError, RuntimeError):
        return False


def int8_fast() -> bool:
    """Whether PyTorch runs its vectorized int8 kernel on this CPU (x86 with AVX2 or AVX-512),
    where int8 copies beat float32 for a few rows with or without native bfloat16."""
    return x86_simd() and int8_kernel()


def _row_scales(weight: torch.Tensor) -> torch.Tensor:
    """One scale per row of `weight` (N, K) for symmetric int8: a row's largest |weight| maps to
    127. (N,) float32."""
    return weight.abs().amax(dim=1).clamp(min=1e-30) / 127


def _w8a8_packed(weight: torch.Tensor) -> object:
    """`weight` (N, K) float32 quantized to int8 with one scale per row (as Product's int8) and
    packed for torch.ops.quantized.linear_dynamic; raises where PyTorch cannot."""
    scale = _row_scales(weight)
    with warnings.catch_warnings():
        # PyTorch deprecates quantized tensors (pytorch/pytorch#184982), from which the dynamic
        # product takes its packed weights; a build without them falls back (w8a8_kernel).
        warnings.simplefilter("ignore", UserWarning)
        zero_points = torch.zeros(len(weight), dtype=torch.long)
        q = torch.quantize_per_channel(weight, scale.double(), zero_points, 0, torch.qint8)
        return torch.ops.quantized.linear_prepack(q, None)


@cache
def w8a8_kernel() -> bool:
    """Whether this PyTorch build multiplies int8 weights by dynamically quantized int8
    activations on this CPU with FBGEMM (x86; ARM's QNNPACK ignores reduce_range and was never
    measured); without it, w8a8 copies are the next fastest (Product)."""
    if torch.backends.quantized.engine not in ("x86", "fbgemm"):
        return False
    try:
        probe = torch.ones(1, INT8_BLOCK)
        return torch.ops.quantized.linear_dynamic(probe, _w8a8_packed(probe), True).numel() == 1
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


# PyTorch's process-wide oneDNN switch, held off while any thread samples (model.stepwise).
# The copies' products do not read it: prepacked bfloat16 calls oneDNN directly, int8 and w8a8
# are ATen's and FBGEMM's kernels.
ONEDNN_SWITCH = Hold(lambda: torch.backends.mkldnn.enabled,
                     lambda on: setattr(torch.backends.mkldnn, "enabled", on))


@contextmanager
def onednn():
    """oneDNN on for the block, then as it was: for F.linear on bfloat16 weights, which without
    it takes a generic kernel 10x slower (7.7 ms against 0.72 for the gates at 16 rows). Only a
    PyTorch build without the prepacking operators (_packed_bf16) goes there; not held across
    threads as ONEDNN_SWITCH is."""
    previous = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = True
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = previous


class Product:
    """y = x Wᵀ with a copy of W (N, K): bfloat16, int8 with one bfloat16 scale per row
    (symmetric: a row's largest |weight| maps to 127), w8a8 (the same int8 rows, activations
    quantized per call; FBGEMM), or float32. Takes (B, K) and returns (B, N) in `input_dtype`:
    bfloat16 for bf16 and int8 copies, float32 for the others."""

    def __init__(self, weight: torch.Tensor, kind: str):
        weight = weight.detach().float()
        if (kind == "int8" and (weight.size(1) % INT8_BLOCK or weight.size(1) == 0
                                or not int8_kernel())) or (kind == "w8a8" and not w8a8_kernel()):
            # A width the kernel cannot take (a tiny cluster may have 0), or no kernel: the
            # next fastest copy on this CPU.
            kind = "bf16" if native_bf16() else "fp32"
        self.kind, self.scale, self.packed = kind, None, False
        self.input_dtype = torch.float32 if kind in ("fp32", "w8a8") else torch.bfloat16
        if kind == "fp32":
            self.weight = weight
        elif kind == "w8a8":
            self.weight = _w8a8_packed(weight.contiguous())
        elif kind == "int8":
            scale = _row_scales(weight)  # (N,)
            self.weight = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
            self.scale = scale.to(torch.bfloat16)
        else:
            self.weight, self.packed = _packed_bf16(weight.to(torch.bfloat16))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "fp32":
            return F.linear(x.float(), self.weight)
        if self.kind == "w8a8":
            # reduce_range: activations in 7 bits, so that AVX2's 16-bit pairwise sums
            # (vpmaddubsw, CPUs without VNNI) cannot saturate.
            return torch.ops.quantized.linear_dynamic(x.float().contiguous(), self.weight, True)
        # Both kernels read x as a dense matrix whose first element is aligned as a fresh
        # tensor's (64 bytes); a column slice of a one-row product is contiguous but not
        # aligned, and crashed the int8 one, so such a view is copied first.
        x = x.to(torch.bfloat16)
        if not x.is_contiguous() or x.data_ptr() % 64:
            x = x.clone(memory_format=torch.contiguous_format)
        if self.kind == "int8":
            return torch._weight_int8pack_mm(x, self.weight, self.scale)
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, None, "none", [], "")
        with onednn():
            return F.linear(x, self.weight)


def _packed_bf16(weight: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """`weight` (bfloat16) laid out once in oneDNN's blocked format, and whether that worked.

    F.linear lays a bfloat16 weight out again at every call, which costs more than the
    arithmetic: the gates' product took 533 µs at one row, 606 at 16, 938 at 64, against 358,
    414, 566 prepacked (one core of a Xeon with AMX). The two operators are PyTorch's own (its
    compiler's CPU backend prepacks weights with them) but not public API, so a build without
    them keeps the plain weight and F.linear.
    """
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight)
        probe = torch.zeros(1, weight.size(1), dtype=torch.bfloat16)
        torch.ops.mkldnn._linear_pointwise(probe, packed, None, "none", [], "")
        return packed, True
    except (AttributeError, RuntimeError, NotImplementedError):
        return weight, False


def _beside_gates(kind: str) -> str:
    """The copies a product other than the LSTM's gates takes under `kind`: w8a8 quantizes the
    gates' activations alone (quantizing the projection's lost 0.015 bpc), so the others take
    float32; where w8a8 has no kernel they fall back as the gates do."""
    return "fp32" if kind == "w8a8" and w8a8_kernel() else kind


class _LstmLayer:
    """One LSTM layer's copies. The gate rows are reordered from nn.LSTM's (i, f, g, o) to
    (i, f, o, g), so that one sigmoid covers the first three gates and one tanh the last."""

    def __init__(self, lstm: nn.LSTM, layer: int, kind: str):
        get = lambda name: getattr(lstm, f"{name}_l{layer}").detach()  # noqa: E731
        H = lstm.hidden_size
        order = torch.cat([torch.arange(0, 2 * H), torch.arange(3 * H, 4 * H),
                           torch.arange(2 * H, 3 * H)])
        # [W_ih W_hh]: one product of [x_t h] per step, the input's share included (precomputing
        # it for all T steps at once writes a (T, B, 4H) float32 tensor out to memory and back,
        # which cost more than it saved).
        self.gates = Product(torch.cat([get("weight_ih"), get("weight_hh")], dim=1)[order], kind)
        self.bias = (get("bias_ih") + get("bias_hh"))[order]  # (4H,) float32
        self.project = Product(get("weight_hr"), _beside_gates(kind)) if lstm.proj_size else None


class _GruLayer:
    """One GRU layer's copies, one product a step as the LSTM's: [x_t h] times a stacked matrix
    gives the sums of the reset and update gates, and the input's and the state's shares of the
    candidate apart (n = tanh(x W_in + b_in + r ⊙ (h W_hn + b_hn)) scales only the latter),
    so its rows are [W_ir W_hr; W_iz W_hz; W_in 0; 0 W_hn]: (4H, E + H)."""

    def __init__(self, gru: nn.GRU, layer: int, kind: str):
        get = lambda name: getattr(gru, f"{name}_l{layer}").detach()  # noqa: E731
        H = gru.hidden_size
        w_ih, w_hh = get("weight_ih"), get("weight_hh")  # (3H, E), (3H, H): rows r, z, n
        stacked = torch.cat([torch.cat([w_ih[: 2 * H], w_hh[: 2 * H]], dim=1),
                             torch.cat([w_ih[2 * H :], w_hh.new_zeros(H, H)], dim=1),
                             torch.cat([w_ih.new_zeros(H, w_ih.size(1)), w_hh[2 * H :]], dim=1)])
        self.gates = Product(stacked, kind)
        b_ih, b_hh = get("bias_ih"), get("bias_hh")
        self.bias = torch.cat([b_ih[: 2 * H] + b_hh[: 2 * H], b_ih[2 * H :], b_hh[2 * H :]])


class _AdaptiveCopies:
    """nn.AdaptiveLogSoftmaxWithLoss's copies: the first product of every cluster and the head
    stacked into one matrix (one product per step instead of 1 + clusters), then each cluster's
    second product.

    The clusters come first, each padded with zero rows to a multiple of ALIGN_ROWS, so that in
    a one-row product each cluster's share starts where the second product's kernel may read it
    as it is (a fresh tensor's 64-byte alignment), without a copy."""

    ALIGN_ROWS = 32  # 64 bytes of bfloat16

    def __init__(self, adaptive: nn.AdaptiveLogSoftmaxWithLoss, kind: str):
        # Under w8a8 float32 copies, not the module's own products: one stacked product
        # instead of 1 + clusters.
        kind = _beside_gates(kind)
        blocks, self.projected = [], []  # weights; (start, stop) of each cluster's projection
        for tail in adaptive.tail:
            w = tail[0].weight.detach()
            start = sum(b.size(0) for b in blocks)
            self.projected.append((start, start + w.size(0)))
            blocks += [w, w.new_zeros(-w.size(0) % self.ALIGN_ROWS, w.size(1))]
        self.head_start = sum(b.size(0) for b in blocks)
        self.first = Product(torch.cat([*blocks, adaptive.head.weight.detach()]), kind)
        self.head_bias = adaptive.head.bias.detach() if adaptive.head.bias is not None else None
        self.seconds = [Product(tail[1].weight, kind) for tail in adaptive.tail]
        self.shortlist, self.cutoffs = adaptive.shortlist_size, adaptive.cutoffs


def _version(weight: torch.Tensor) -> tuple[int, int]:
    """What changes when a weight's values may have: its storage (replaced by `.data = ...`,
    `model.half().float()`, `load_state_dict` with assign) and its version counter (advanced by
    in-place updates that autograd sees: an optimizer step, `copy_`). A change made in place
    through `.data` moves neither and is not seen. A tensor made under torch.inference_mode()
    has no counter, and such a model's weights are taken as fixed."""
    return weight.data_ptr(), 0 if weight.is_inference() else weight._version


class Copies:
    """Reduced copies of one module's weights, per kind, made on first use and again whenever a
    weight changes: the weights themselves and their versions (_version) are compared at every
    call, which costs microseconds, or once per kind inside `held()`. `weights(module)` lists
    the weights copied.

    What is kept of each weight is the parameter and a detached view of its values (the same
    storage and version counter): while the view lives, that storage cannot be freed, so a new
    storage given to the parameter (`.data = ...`, twice) can never land at the address the
    copies were made from and pass for it."""

    def __init__(self, weights: Callable[[nn.Module], list[torch.Tensor]],
                 build: Callable[[nn.Module, str], object]):
        self._weights, self._build = weights, build
        # kind -> (the parameters, views of their values then, their versions then, copies)
        self._made: dict[str, tuple[list[torch.Tensor], list[torch.Tensor],
                                    list[tuple[int, int]], object]] = {}
        self._held: dict[str, object] | None = None  # inside held(): kind -> copies
        self._holders = 0  # held() blocks open, however they nest or end

    def get(self, module: nn.Module, kind: str):
        if self._held is not None and kind in self._held:
            return self._held[kind]
        params = self._weights(module)
        versions = [_version(p) for p in params]
        made = self._made.get(kind)
        if (made is None or versions != made[2]  # a list of another length differs too
                or not all(a is b for a, b in zip(params, made[0]))):
            values = [p.detach() for p in params]
            made = self._made[kind] = (params, values, versions, self._build(module, kind))
        if self._held is not None:
            self._held[kind] = made[3]
        return made[3]

    @contextmanager
    def held(self):
        """Within the block the weights are assumed not to change: each kind's copies are
        checked at their first use only. For a loop that steps the model a character at a time,
        where comparing the weights at every step cost ~18 µs of a ~600 µs step. Blocks may
        nest or overlap (two threads sampling one model); checking resumes when the last ends."""
        if self._holders == 0:
            self._held = {}
        self._holders += 1
        try:
            yield
        finally:
            self._holders -= 1
            if self._holders == 0:
                self._held = None

    def __deepcopy__(self, memo) -> "Copies":
        """A copied model's copies start empty, and unheld even if copied inside a block: they
        would be of the original's weights."""
        return Copies(self._weights, self._build)


def rnn_copies(cell: str) -> Copies:
    """The copies of an nn.LSTM's ("lstm") or nn.GRU's ("gru") weights, layer by layer. A kind
    whose gate products come out float32 (int8 asked for, a width the kernel cannot take, no
    native bfloat16) gives None: float32 weights behind bfloat16-rounded inputs are slower and
    less exact than the module's own, which then runs."""
    layer_copies = _GruLayer if cell == "gru" else _LstmLayer

    def build(rnn: nn.LSTM | nn.GRU, kind: str) -> list | None:
        layers = [layer_copies(rnn, i, kind) for i in range(rnn.num_layers)]
        return None if any(layer.gates.kind == "fp32" for layer in layers) else layers

    return Copies(lambda rnn: [w for layer in rnn.all_weights for w in layer], build)


def _adaptive_weights(adaptive: nn.AdaptiveLogSoftmaxWithLoss) -> list[torch.Tensor]:
    # Named rather than found by module.parameters(), whose walk over the submodules cost more
    # than the rest of the check (~7 µs a step).
    weights = [adaptive.head.weight, *(t[i].weight for t in adaptive.tail for i in (0, 1))]
    return weights if adaptive.head.bias is None else [*weights, adaptive.head.bias]


def adaptive_copies() -> Copies:
    return Copies(_adaptive_weights, _AdaptiveCopies)


def lstm_forward(layers: list[_LstmLayer], x: torch.Tensor,
                 state: tuple[torch.Tensor, torch.Tensor]
                 ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """nn.LSTM's output for x (T, B, E) float32 from (h (L, B, P), c (L, B, H)), in eval mode
    (no dropout): outputs (T, B, P) and the state after the last step, all float32.

    Written for sampling's one step at a time, where the operations between the products cost
    more than their arithmetic: after a product has streamed megabytes of weights through the
    caches, each small operation takes several times its time in a warm cache (the add of the
    bias 8-25 µs right after the gate product, 3 after nothing: bench/step_anatomy.py), so every
    one left out counts. The next product takes h as the projection gave
    it (bfloat16 from a bf16 or int8 copy, whose float32 is the same numbers widened; float32
    under w8a8, whose gates take float32 and quantize it themselves)."""
    hs, cs = [], []
    for layer, copies in enumerate(layers):
        c = state[1][layer]  # (B, H)
        H = c.size(1)
        dtype = copies.gates.input_dtype  # bfloat16, or float32 for w8a8 gates
        h_product = state[0][layer].to(dtype)  # (B, P)
        outputs = []
        for x_t in x.to(dtype).unbind(0):
            # Widened, then the bias added in place: the same sum as bfloat16 + float32, which
            # PyTorch's type promotion made 2x slower at 64 rows (179 µs against 91).
            gates = copies.gates(torch.cat([x_t, h_product], dim=1)).float().add_(copies.bias)
            # In place on `gates` (B, 4H) float32, a fresh tensor: no allocation per gate.
            ifo = gates[:, : 3 * H].sigmoid_()
            c = torch.addcmul(ifo[:, H : 2 * H] * c, ifo[:, :H], gates[:, 3 * H :].tanh_())
            h = torch.tanh(c).mul_(ifo[:, 2 * H :])  # o tanh(c): (B, H)
            if copies.project is None:
                h_product = h.to(dtype)
            else:
                h_product = copies.project(h.to(copies.project.input_dtype))  # (B, P)
                h = h_product.float()
            outputs.append(h)
        x = torch.stack(outputs) if len(outputs) > 1 else h[None]
        hs.append(h)
        cs.append(c)
    if len(layers) == 1:  # sampling's usual case: views, not copies
        return x, (hs[0][None], cs[0][None])
    return x, (torch.stack(hs), torch.stack(cs))


def gru_forward(layers: list[_GruLayer], x: torch.Tensor, h0: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """nn.GRU's output for x (T, B, E) float32 from h0 (L, B, H), in eval mode: outputs
    (T, B, H) and the state after the last step (L, B, H), float32 (see lstm_forward)."""
    hs = []
    for layer, copies in enumerate(layers):
        h = h0[layer]  # (B, H)
        H = h.size(1)
        dtype = copies.gates.input_dtype
        outputs = []
        for x_t in x.to(dtype).unbind(0):
            g = copies.gates(torch.cat([x_t, h.to(dtype)], dim=1)).float().add_(copies.bias)
            rz = g[:, : 2 * H].sigmoid_()  # reset, update
            n = torch.addcmul(g[:, 2 * H : 3 * H], rz[:, :H], g[:, 3 * H :]).tanh_()
            h = torch.addcmul(n, rz[:, H:], h - n)  # (1 - z) n + z h
            outputs.append(h)
        x = torch.stack(outputs) if len(outputs) > 1 else h[None]
        hs.append(h)
    return x, (hs[0][None] if len(layers) == 1 else torch.stack(hs))


def adaptive_log_prob(copies: _AdaptiveCopies, x: torch.Tensor) -> torch.Tensor:
    """nn.AdaptiveLogSoftmaxWithLoss.log_prob of x (B, P) float32: (B, V) float32."""
    head_logp, first = _head_log_prob(copies, x)
    out = x.new_empty(x.size(0), copies.cutoffs[-1])
    out[:, : copies.shortlist] = head_logp[:, : copies.shortlist]
    clusters = zip(copies.seconds, copies.projected, copies.cutoffs, copies.cutoffs[1:])
    for i, (second, (a, b), start, stop) in enumerate(clusters):
        cluster = F.log_softmax(second(first[:, a:b]), dim=1, dtype=torch.float32)
        torch.add(cluster, head_logp[:, copies.shortlist + i, None], out=out[:, start:stop])
    return out


def adaptive_head_log_prob(copies: _AdaptiveCopies, x: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """The head's log-probabilities (B, shortlist + clusters) of x (B, P), which are the
    shortlist's characters' own, and the stacked first product whose columns
    `copies.projected` the clusters' second products take. Alone, for a character of the
    shortlist, it is the whole answer at a fraction of the cost (model.log_prob_of)."""
    return _head_log_prob(copies, x)


def _head_log_prob(copies: _AdaptiveCopies, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    first = copies.first(x)  # (B, cluster projections + head)
    head = first[:, copies.head_start :]
    head = head.float() if copies.head_bias is None else head + copies.head_bias
    return F.log_softmax(head, dim=1), first
