"""Why SeLoRA-F learns less than SeLoRA-W: where Adam's first step puts its update, per basis.

Adam normalises each trainable coordinate by its own gradient scale, so its early steps are
close to lr * sign(gradient) in the coordinates being trained. LoRA trains A and B entry by entry:
every input channel (a column of A) and output channel (a row of B) moves by about lr. A spectral
factor trains coefficients; its step in the matrix is materialise(sign(adjoint(G))). A wavelet
coefficient touches a few neighbouring channels; a Fourier (Hartley) coefficient touches all of
them, so when a few channels carry most of the gradient (activation outliers: a language model's
hidden states have them), the signs of every coefficient follow those channels, and the step lands
on them and little elsewhere.

This script measures both halves on the real model, one batch of the addition task, LoRA r 32 on
q, k, v, up, down with B drawn small (so that A has a gradient too):

- gradient heterogeneity: per channel gradient norm, max / median, per module kind and factor;
- where the sign step lands, per basis (LoRA = the identity, haar, db4, fourier; eta 0.6): the
  share of the step's squared norm on the 5 % of channels with the largest gradient (5 % if the
  step were spread evenly), and its per-channel max / median.

Prints a table and, last, one JSON document (`--json PATH` writes it). `--quick`: the tiny model.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch

try:  # as a module (tests) or as a script
    from benchmarks import quality_tasks as tasks
    from benchmarks.publish import publish, quick_model_dir
    from benchmarks.quality_real import Sizes, default_model_dir, spec_for, target_shapes_of
except ImportError:
    import quality_tasks as tasks
    from publish import publish, quick_model_dir
    from quality_real import Sizes, default_model_dir, spec_for, target_shapes_of
from selora_serve.spectral.adjoint import adjoint
from selora_serve.spectral.basis import Basis
from selora_serve.spectral.materialise import layout_for, materialise

BASES = {"lora": None, "haar": Basis("wavelet", "haar"), "db4": Basis("wavelet", "db4"), "fourier": Basis("fourier")}
TOP = 0.05  # the share of channels called "the largest"


def channel_norms(matrix: torch.Tensor, factor: str) -> torch.Tensor:
    """Per channel norms: A (r, in) by input channel (columns), B (out, r) by output channel (rows)."""
    return matrix.norm(dim=0) if factor == "A" else matrix.norm(dim=1)


def sign_step(grad: torch.Tensor, basis: Basis | None, eta: float) -> torch.Tensor:
    """Adam's first step direction (sign of the gradient in the trained coordinates), in the matrix."""
    if basis is None:
        return torch.sign(grad)
    layout = layout_for(basis, 0, eta, tuple(grad.shape))
    return materialise(torch.sign(adjoint(grad, layout)), layout)


def gradients(model_dir: str, examples: int) -> dict[str, dict[str, torch.Tensor]]:
    """{module path: {"A": dLoss/dA, "B": dLoss/dB}} of LoRA r 32 (B ~ N(0, 0.01)) on one batch."""
    from selora_serve.training.data import collate, pad_token_id
    from selora_serve.training.inject import adapted_layers, inject
    from selora_serve.training.job import load_model, load_tokenizer
    from selora_serve.training.trainer import _token_loss_sum

    tokenizer, model = load_tokenizer(model_dir), load_model(model_dir)
    inject(model, spec_for("lora-r32", Sizes(), target_shapes_of(model), 0))
    generator = torch.Generator().manual_seed(0)
    layers = adapted_layers(model)
    with torch.no_grad():
        for layer in layers.values():
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=generator) * 0.01)
    batch = collate(tasks.encode(tasks.addition_split(examples, 0, 0)["train"], tokenizer, "train"),
                    pad_token_id(tokenizer))
    _token_loss_sum(model, batch).backward()
    return {name: {"A": layer.lora_A.weight.grad.clone(), "B": layer.lora_B.weight.grad.clone()}
            for name, layer in layers.items()}


def measure(grads: dict[str, dict[str, torch.Tensor]], eta: float) -> list[dict]:
    rows: dict[tuple[str, str], dict[str, list[float]]] = {}
    for name, factors in grads.items():
        kind = name.rsplit(".", 1)[-1]
        for factor, grad in factors.items():
            g_norm = channel_norms(grad, factor)
            top = g_norm.argsort(descending=True)[: max(1, round(TOP * g_norm.numel()))]
            row = rows.setdefault((kind, factor), {"grad_max_over_median": []})
            row["grad_max_over_median"].append((g_norm.max() / g_norm.median()).item())
            for label, basis in BASES.items():
                step = channel_norms(sign_step(grad, basis, eta), factor) ** 2
                row.setdefault(f"{label}_top_share", []).append((step[top].sum() / step.sum()).item())
                row.setdefault(f"{label}_max_over_median", []).append((step.max() / step.median()).sqrt().item())
    return [{"module": kind, "factor": factor, **{k: statistics.median(v) for k, v in values.items()}}
            for (kind, factor), values in rows.items()]


def print_table(report: dict) -> None:
    print(f"model {report['model_dir']}; one batch of {report['examples']} addition examples; LoRA r 32 gradients "
          f"(B ~ N(0, 0.01)); spectral layouts at eta {report['eta']}; medians over layers")
    print(f"share of Adam's first (sign) step on the {TOP:.0%} of channels with the largest gradient "
          f"(an even spread: {TOP:.0%}), and the step's per-channel max / median")
    header = f"{'module':<10} {'factor':<6} {'grad max/med':>12} " + " ".join(f"{b:>16}" for b in BASES)
    print(header)
    print("-" * len(header))
    for row in report["rows"]:
        cells = " ".join(f"{row[f'{b}_top_share']:>8.1%} / {row[f'{b}_max_over_median']:>5.1f}" for b in BASES)
        print(f"{row['module']:<10} {row['factor']:<6} {row['grad_max_over_median']:>12.1f} {cells}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Where Adam's first step lands per basis (LoRA, haar, db4, "
                                     "fourier), against the per-channel spread of LoRA's gradient on SmolLM2. "
                                     "Prints a table and one JSON document; about a minute on 2 CPU cores.")
    parser.add_argument("--model-dir", metavar="DIR", default=None, help="base model directory (default: SmolLM2)")
    parser.add_argument("--examples", type=int, default=32, help="addition examples in the batch (default 32)")
    parser.add_argument("--eta", type=float, default=0.6, help="sparse ratio of the spectral layouts (default 0.6)")
    parser.add_argument("--json", metavar="PATH", default=None, help="write the JSON document here")
    parser.add_argument("--quick", action="store_true", help="smoke run for the test suite: the tiny model")
    args = parser.parse_args(argv)
    if args.examples < 1 or not 0 <= args.eta < 1:
        parser.error("--examples >= 1 and --eta in [0, 1)")
    if args.quick:
        model_dir, args.examples = quick_model_dir("fourier-gap"), 4
    else:
        model_dir = args.model_dir or default_model_dir()
    rows = measure(gradients(model_dir, args.examples), args.eta)
    report = {"benchmark": "fourier-gap", "model_dir": model_dir, "examples": args.examples, "eta": args.eta,
              "top_share_of_channels": TOP, "rows": rows, "quick": args.quick}
    publish(report, table=print_table, json_path=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
