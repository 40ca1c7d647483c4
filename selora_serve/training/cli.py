"""selora-train: fine-tune a SeLoRA / SeDoRA / LoRA adapter on a local Hugging Face model.

Parsing and printing only: the run is `selora_serve.training.job.train`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from selora_serve.cli_args import DTYPE_CHOICES, add_basis_options, add_coef_dtype_option

DESCRIPTION = """\
Fine-tune an adapter on a local Hugging Face causal LM and write it as a compact SeLoRA
checkpoint (docs/FORMAT.md), which selora-convert turns into PEFT, merges, and the server loads.

What is trained (--variant):
  selora   LoRA's update (alpha/r) B A, with A and B the inverse spectral transform of sparse
           spectra: only (1 - eta) of LoRA's parameters are learned (--basis wavelet is SeLoRA-W,
           the paper's better variant; --basis fourier is SeLoRA-F)
  sedora   the same A and B inside DoRA (a learned magnitude per output row over W0 + dW);
           servable merged (selora-convert merge), not through LoRA slots
  lora     plain dense LoRA, the baseline; written as a PEFT LoRA directory at --out, since
           dense A and B have no spectral form (--basis, --wavelet and --eta are ignored)

Data (--data, JSONL, one object per line):
  {"instruction": ..., "input": ... (optional), "output": ...}   alpaca-style; the prompt is the
        Stanford Alpaca template ("Below is an instruction that describes a task. ...
        ### Instruction: ... ### Response:"), the one the server uses, and the loss is taken on
        the output only
  {"text": ...}                                                 plain text, loss on every token
  {"messages": [{"role": "user", "content": ...},
                {"role": "assistant", "content": ...}, ...]}     chat, rendered with the model's
        own chat template exactly as /v1/chat/completions renders it; the loss is taken on the
        assistant turns only (system and user turns are context)
Bad records (invalid JSON, a missing field, an empty file, an example over --max-len) stop the
run before training with the file and line number. Nothing is truncated.

Optimisation follows the paper's appendix C: AdamW, a cosine schedule after a linear warm-up,
dropout 0.05 on the adapter input, r=32, alpha=64. The base model stays frozen.

Checkpoints for resuming go to OUT.train/step-N/ (every --save-every steps and at every epoch
end); after an interruption, run the same command with --resume. OUT.train is removed when the
run finishes, unless --keep-work-dir.
"""

EPILOG = """\
examples:
  selora-train --model ./llama --data alpaca.jsonl --out ./ckpt
  selora-train --model ./llama --data alpaca.jsonl --out ./ckpt --basis fourier --eta 0.4 \\
      --epochs 3 --lr 3e-4 --batch-size 4 --grad-accum 4 --export-peft ./ckpt-peft
  selora-train --model ./llama --data alpaca.jsonl --out ./ckpt --resume   # after an interruption
  selora-train --model ./llama --data alpaca.jsonl --out ./lora-peft --variant lora --rank 13
"""


def _warmup(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction like 0.03 or a step count like 100, got {text!r}") from None
    return int(value) if value >= 1 else value


def build_parser() -> argparse.ArgumentParser:
    from selora_serve import __version__
    from selora_serve.training.data import FORMATS

    p = argparse.ArgumentParser(
        prog="selora-train", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")

    io = p.add_argument_group("input and output")
    io.add_argument("--model", required=True, metavar="MODEL_DIR", help="local Hugging Face model directory (the frozen base)")
    io.add_argument("--data", required=True, metavar="FILE.jsonl", help="training data: alpaca-style, plain text or chat JSONL (see above)")
    io.add_argument("--data-format", choices=FORMATS, default="auto",
                    help="record kind; auto decides from the first record's keys; default %(default)s")
    io.add_argument("--out", required=True, metavar="CKPT",
                    help="directory to write: a SeLoRA checkpoint (a PEFT directory for --variant lora)")
    io.add_argument("--export-peft", metavar="DIR", default=None,
                    help="also write the trained adapter as a dense PEFT LoRA directory here (spectral variants)")
    add_coef_dtype_option(io)
    io.add_argument("--coef-bits", type=int, choices=(8, 4), default=None,
                    help="store the trained coefficients quantised to 8 or 4 bits (format version 3; lossy, "
                    "a float16 scale per 128 coefficients); --export-peft then writes the dequantised adapter")
    io.add_argument("--overwrite", action="store_true",
                    help="replace existing outputs; without --resume also discards OUT.train checkpoints")

    ad = p.add_argument_group("adapter")
    ad.add_argument("--variant", choices=("selora", "sedora", "lora"), default="selora",
                    help="selora, sedora (DoRA magnitudes) or lora (dense baseline); default %(default)s")
    add_basis_options(ad)
    ad.add_argument("--eta", type=float, default=0.6,
                    help="sparse ratio in [0, 1): the fraction of spectral entries masked (0.4-0.6 in the paper); default %(default)s")
    ad.add_argument("--rank", type=int, default=32, help="rank r of A (r x in) and B (out x r); default %(default)s")
    ad.add_argument("--alpha", type=float, default=64.0, help="LoRA alpha (scaling = alpha / r); default %(default)s")
    ad.add_argument("--dropout", type=float, default=0.05, help="dropout on the adapter input, as in LoRA; default %(default)s")
    ad.add_argument("--targets", default="q_proj,k_proj,v_proj,up_proj,down_proj",
                    help="comma-separated last names of the linear layers to adapt; default %(default)s")

    tr = p.add_argument_group("training")
    tr.add_argument("--epochs", type=int, default=3, help="passes over the data; default %(default)s")
    tr.add_argument("--lr", type=float, default=3e-4, help="peak AdamW learning rate (paper: 2e-4 to 6e-4); default %(default)s")
    tr.add_argument("--batch-size", type=int, default=8, help="examples per micro-batch; default %(default)s")
    tr.add_argument("--grad-accum", type=int, default=1,
                    help="micro-batches per optimiser step (effective batch = batch size x this); default %(default)s")
    tr.add_argument("--max-len", type=int, default=512, help="longest example in tokens; longer ones are an error; default %(default)s")
    tr.add_argument("--warmup", type=_warmup, default=0.03,
                    help="linear warm-up before the cosine decay: a fraction of all steps (< 1) or a step count; default %(default)s")
    tr.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay; default %(default)s")
    tr.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping norm, 0 to disable; default %(default)s")
    tr.add_argument("--optimizer", choices=("adamw", "projected-adamw"), default="adamw",
                    help="adamw: Adam on the coefficients (the paper's); projected-adamw: Adam's moments per entry of "
                    "the decoded A and B, the step projected onto the coefficients, i.e. LoRA's step within the "
                    "adapter's function space (helps the Fourier basis, whose coefficients each touch every "
                    "channel; spectral variants only); default %(default)s")
    tr.add_argument("--seed", type=int, default=0,
                    help="seeds the coefficient positions (Omega), the initial values, data order and dropout; default %(default)s")
    tr.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N; default %(default)s")
    tr.add_argument("--dtype", choices=DTYPE_CHOICES, default="float32",
                    help="dtype of the frozen base weights (the adapter trains in float32); default %(default)s")

    ck = p.add_argument_group("checkpoints and progress")
    ck.add_argument("--save-every", type=int, default=0, metavar="STEPS",
                    help="also checkpoint every STEPS optimiser steps (0: at epoch ends only); default %(default)s")
    ck.add_argument("--keep-checkpoints", type=int, default=2, help="newest checkpoints kept in OUT.train; default %(default)s")
    ck.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in OUT.train")
    ck.add_argument("--keep-work-dir", action="store_true", help="keep OUT.train after the run finishes")
    ck.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def job_from_args(args: argparse.Namespace):
    from selora_serve.config import SeLoRAConfig
    from selora_serve.training.job import TrainJob
    from selora_serve.training.layers import AdapterSpec
    from selora_serve.training.trainer import TrainConfig

    config = SeLoRAConfig(
        basis=args.basis, wavelet=args.wavelet if args.basis == "wavelet" else None, eta=args.eta,
        r=args.rank, alpha=args.alpha, seed=args.seed,
        target_modules=tuple(t.strip() for t in args.targets.split(",") if t.strip()),
    )
    if args.optimizer == "projected-adamw" and args.variant == "lora":
        raise ValueError("--optimizer projected-adamw steps spectral factors; --variant lora trains dense ones "
                         "(use --optimizer adamw)")
    train = TrainConfig(
        epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, grad_accum=args.grad_accum,
        max_len=args.max_len, warmup=args.warmup, weight_decay=args.weight_decay,
        max_grad_norm=args.max_grad_norm, seed=args.seed, save_every=args.save_every,
        keep_checkpoints=args.keep_checkpoints, optimizer=args.optimizer,
    )
    return TrainJob(
        model=args.model, data=args.data, out=args.out,
        spec=AdapterSpec.for_variant(args.variant, config, dropout=args.dropout), train=train,
        data_format=args.data_format, device=args.device, dtype=args.dtype, export_peft=args.export_peft,
        coefficient_dtype=args.coef_dtype, coefficient_bits=args.coef_bits, overwrite=args.overwrite,
        resume=args.resume,
        keep_work_dir=args.keep_work_dir,
    )


def _print_summary(job, summary) -> None:
    fit = summary.fit
    share = f" ({100 * summary.trainable_parameters / summary.base_parameters:.3f} % of {summary.base_parameters:,})" \
        if summary.base_parameters else ""
    rows = [
        ("adapter", job.spec.label + f", r={job.spec.config.r}, alpha={job.spec.config.alpha:g}"
         + ("" if job.spec.dense else f", eta={job.spec.config.eta}")),
        ("trainable parameters", f"{summary.trainable_parameters:,}{share}"),
        ("examples", f"{summary.examples:,}"),
        ("steps", f"{fit.steps} of {fit.total_steps}" + (f" (resumed at {fit.resumed_from})" if fit.resumed_from else "")),
        ("loss", f"{fit.losses[0]:.4f} (first step) -> {fit.losses[-1]:.4f} (last step)" if fit.losses else "-"),
        ("throughput", f"{fit.tokens_per_second:,.0f} tokens/s on {summary.device}"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    for path in summary.written:
        print(f"wrote {path}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from selora_serve.errors import USER_ERRORS
    from selora_serve.training.checkpoints import work_dir_for

    try:
        job = job_from_args(args)
        from selora_serve.training.job import train

        summary = train(job, progress=not args.quiet)
    except USER_ERRORS as exc:
        print(f"selora-train: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"selora-train: interrupted; checkpoints so far are in {work_dir_for(args.out)} "
              "(run again with --resume to continue)", file=sys.stderr)
        return 130
    _print_summary(job, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
