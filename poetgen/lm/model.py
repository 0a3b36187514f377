"""The language model: embedding -> stacked LSTM -> softmax over the character vocabulary.

Shapes use T for time (characters), B for batch (parallel streams), E/H/P for the embedding, cell
and output sizes, L for layers and V for the vocabulary. The model is sequence-first, (T, B), like
nn.LSTM's default, so a chunk of a batchified stream goes in without transposing.

Classical Chinese needs ~6,500 characters, so the output layer is most of the compute. The default
adaptive softmax (Grave et al. 2017) gives the 1,000 commonest characters (~85% of tokens) a full
head and the rare ones smaller projected clusters, which is several times cheaper at equal quality.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
from torch import nn
from torch.nn import functional as F

from poetgen.lm.config import ModelConfig

State = tuple[torch.Tensor, torch.Tensor]  # (h, c): (L, B, P) and (L, B, H)


class CharLSTM(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        config.validate()
        self.config = config
        V, E, H, L = config.vocab_size, config.embed_size, config.hidden_size, config.num_layers
        self.output_size = config.proj_size or H
        self.embedding = nn.Embedding(V, E)
        self.dropout = nn.Dropout(config.dropout)
        self.lstm = nn.LSTM(E, H, L, dropout=config.dropout if L > 1 else 0.0,
                            proj_size=config.proj_size)
        self.cutoffs = [c for c in config.cutoffs if c < V - 1]
        if config.softmax == "adaptive" and self.cutoffs:
            self.adaptive = nn.AdaptiveLogSoftmaxWithLoss(self.output_size, V, self.cutoffs,
                                                          div_value=4.0)
        else:  # full softmax; also the fallback for small vocabularies (e.g. English, ~65)
            self.adaptive = None
            if config.tie_weights:
                # Tying shares one matrix between reading and writing a character, which helps rare
                # characters; a projection bridges the sizes when the LSTM output is not E wide.
                self.to_embed = nn.Linear(self.output_size, E) if self.output_size != E else nn.Identity()
                self.decoder = nn.Linear(E, V)
                self.decoder.weight = self.embedding.weight
            else:
                self.to_embed = nn.Identity()
                self.decoder = nn.Linear(self.output_size, V)
        # The state a poem starts from at generation and evaluation time; see burn_in_start_state.
        self.register_buffer("start_h", torch.zeros(L, 1, self.output_size))
        self.register_buffer("start_c", torch.zeros(L, 1, H))
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.normal_(self.embedding.weight, std=0.1)
        H = self.config.hidden_size
        for name, p in self.lstm.named_parameters():
            if name.startswith("weight_hh"):
                # Orthogonal recurrent weights keep the norm of the state roughly constant from step
                # to step at initialisation, so gradients through 64 steps neither vanish nor explode.
                for gate in range(4):
                    nn.init.orthogonal_(p.data[gate * H : (gate + 1) * H])
            elif name.startswith("bias"):
                p.data.zero_()
                if name.startswith("bias_ih"):
                    # Gate order is input, forget, cell, output. A forget bias of 1 starts the cell
                    # remembering (gate ~0.73) instead of half-forgetting, the standard fix that lets
                    # early training learn long dependencies (Jozefowicz et al. 2015).
                    p.data[H : 2 * H] = 1.0

    # ---------------------------------------------------------------------------------------
    def zero_state(self, batch_size: int) -> State:
        h = self.start_h.new_zeros(self.config.num_layers, batch_size, self.output_size)
        return h, self.start_c.new_zeros(self.config.num_layers, batch_size, self.config.hidden_size)

    def start_state(self, batch_size: int) -> State:
        """The learned poem-start state, repeated for `batch_size` streams."""
        return (self.start_h.expand(-1, batch_size, -1).contiguous(),
                self.start_c.expand(-1, batch_size, -1).contiguous())

    def forward(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """tokens (T, B) -> LSTM outputs (T, B, P) and the state after the last character."""
        x = self.dropout(self.embedding(tokens))  # (T, B, E)
        out, state = self._lstm(x, state)  # (T, B, P)
        return self.dropout(out), state

    def _lstm(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        # oneDNN has no projection LSTM: PyTorch falls back to ATen's, but warns on every run.
        use_aten = stepwise() if self.config.proj_size and x.device.type == "cpu" else nullcontext()
        with use_aten:
            if not (self.training and self.config.weight_drop > 0):
                return self.lstm(x, state)
            # DropConnect on the hidden-to-hidden matrices (Merity et al. 2017, AWD-LSTM): one
            # mask per chunk, shared by every step and stream. Dropping recurrent *weights* rather
            # than activations regularizes the recurrence without disturbing the fused LSTM kernel.
            p = self.config.weight_drop
            weights = {name: F.dropout(w, p) if name.startswith("weight_hh") else w
                       for name, w in self.lstm.named_parameters()}
            return torch.func.functional_call(self.lstm, weights, (x, state))

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood in nats of `targets` (T, B) given `outputs` (T, B, P)."""
        return self.token_nll(outputs, targets).mean()

    def token_nll(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood in nats of each of `targets` (T, B) given `outputs` (T, B, P)."""
        flat = outputs.reshape(-1, outputs.size(-1))
        if self.adaptive is not None:
            # Only the target's cluster is computed, far cheaper than the whole distribution.
            nll = -self.adaptive(flat, targets.reshape(-1)).output
        else:
            nll = F.cross_entropy(self.decoder(self.to_embed(flat)), targets.reshape(-1),
                                  reduction="none")
        return nll.view(targets.shape)

    def log_probs(self, outputs: torch.Tensor) -> torch.Tensor:
        """Log-probabilities over the whole vocabulary: (..., P) -> (..., V)."""
        flat = outputs.reshape(-1, outputs.size(-1))
        if self.adaptive is not None:
            logp = self.adaptive.log_prob(flat)
        else:
            logp = F.log_softmax(self.decoder(self.to_embed(flat)), dim=-1)
        return logp.view(*outputs.shape[:-1], -1)

    def tied_names(self) -> dict[str, str]:
        """{alias: source} for parameters that are another parameter under a second name.

        Checkpoints store each tensor once (safetensors refuses shared memory), so an alias is
        left out on saving and pointed back at its source on loading.
        """
        if self.adaptive is None and self.config.tie_weights:
            return {"decoder.weight": "embedding.weight"}
        return {}

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Put `model` in evaluation mode (no dropout, no weight drop) for the block, then back in the
    mode it was in, even if the block raises: scoring in the middle of training must not leave the
    model training without dropout."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@contextmanager
def stepwise():
    """Run the LSTM with ATen's kernel instead of oneDNN's, for two cases.

    Loops that feed one character at a time (sampling): oneDNN's LSTM has a fixed cost per call
    of ~3x the arithmetic of a 256-wide step at batch 1, so plain ATen is faster there. And
    projection LSTMs, which oneDNN lacks (see CharLSTM._lstm). Otherwise training keeps oneDNN,
    which is faster on whole chunks."""
    previous = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = previous


@torch.no_grad()
def burn_in_start_state(model: CharLSTM, ids: torch.Tensor) -> None:
    """Set the poem-start state to the state after reading `ids` (ending with a newline).

    Training carries the state from one poem into the next, so the model never sees a poem start
    from zeros; generating from a zero state costs ~0.6 bpc. The state after reading real poems and
    a newline is exactly what the model saw at poem starts while it learned.
    """
    with evaluating(model):
        _, (h, c) = model(ids.view(-1, 1).to(model.start_h.device), model.zero_state(1))
    model.start_h.copy_(h)
    model.start_c.copy_(c)
