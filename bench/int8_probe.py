"""What int8 LSTM weights would cost: val bpc of a one-layer LSTM(P) checkpoint with its LSTM
products done by PyTorch's dynamic int8 linear layers (weights quantized per output channel),
against the float32 model, both read poem by poem as `poetgen eval` reads them; one JSON line.

    python bench/int8_probe.py [CHECKPOINT] [FILE]      # default: `default`, tang_val

A probe for faster sampling (README, Known issues), not a feature: poetgen samples in float32.
"""

import json
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from poetgen.lm.checkpoint import load_checkpoint, resolve  # noqa: E402
from poetgen.lm.evaluate import evaluate_file  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "corpora"


def int8_forward(model):
    """A forward for `model` (one LSTM layer) whose two matrix products are int8 dynamic ones."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    lstm = model.lstm
    E, H = lstm.input_size, lstm.hidden_size
    P = lstm.proj_size or H
    stacked = torch.nn.Linear(E + P, 4 * H, bias=False)
    stacked.weight.data = torch.cat([lstm.weight_ih_l0, lstm.weight_hh_l0], 1).detach()
    project = torch.nn.Linear(H, P, bias=False)
    if lstm.proj_size:
        project.weight.data = lstm.weight_hr_l0.detach()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the eager quantization API warns that it moves to torchao
        q = quantize_dynamic(torch.nn.Sequential(stacked, project), {torch.nn.Linear: per_channel_dynamic_qconfig})
    bias = (lstm.bias_ih_l0 + lstm.bias_hh_l0).detach()

    def forward(tokens, state):
        h, c = state[0][0], state[1][0]
        outputs = []
        for x in model.embedding(tokens):
            i, f, g, o = (q[0](torch.cat([x, h], 1)) + bias).chunk(4, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            h = q[1](h) if lstm.proj_size else h
            outputs.append(h)
        return torch.stack(outputs), (h[None], c[None])

    return forward


@torch.no_grad()
def main():
    ck = load_checkpoint(resolve(sys.argv[1] if len(sys.argv) > 1 else "default"))
    path = sys.argv[2] if len(sys.argv) > 2 else str(SHARED / "tang_val.txt")
    if ck.model.config.num_layers != 1 or ck.model.config.cell != "lstm" or ck.model.attention:
        sys.exit("the probe handles one-layer LSTMs without attention")
    figures = {}
    for name in ("float32", "int8"):
        if name == "int8":
            ck.model.forward = int8_forward(ck.model)
        c = time.process_time()
        figures[f"{name}_bpc"] = round(evaluate_file(ck.model, ck.vocab, path).bpc, 5)
        figures[f"{name}_cpu_s"] = round(time.process_time() - c, 2)
    print(json.dumps({"checkpoint": str(ck.path), "file": path, **figures,
                      "bpc_cost": round(figures["int8_bpc"] - figures["float32_bpc"], 5)}))


if __name__ == "__main__":
    main()
