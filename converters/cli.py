"""selora-convert: create, inspect and convert compact SeLoRA checkpoints.

Parsing and printing only; every subcommand calls one function of `selora_serve.convert`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from selora_serve.cli_args import DTYPE_CHOICES, add_basis_options, add_coef_dtype_option

DESCRIPTION = """\
Create, inspect and convert compact SeLoRA checkpoints.

A SeLoRA checkpoint is a directory holding only the sparse spectral coefficients of an adapter's
A and B matrices (about (1 - eta) of a dense LoRA's size) plus the seed that regenerates their
positions. Its format is specified in docs/FORMAT.md.

  init       a freshly initialised adapter for a base model
  to-peft    materialise A and B: a standard PEFT LoRA directory (PEFT and vLLM load it)
  merge      a complete Hugging Face model directory with the update merged into W0
  from-peft  project an existing dense LoRA onto a spectral support (lossy; reports the error)
  inspect    parameters, share of the base model, bytes on disk against dense LoRA
"""

EPILOG = """\
examples:
  selora-convert init --base ./llama --out ./ckpt --rank 32 --alpha 64 --eta 0.6 --basis wavelet
  selora-convert inspect ./ckpt
  selora-convert to-peft ./ckpt ./ckpt-peft
  selora-convert merge ./ckpt --base ./llama ./llama-merged
  selora-convert from-peft ./some-lora ./ckpt2 --eta 0.6 --base ./llama
  selora-convert quantize ./ckpt ./ckpt-int4 --bits 4
"""


def _progress(desc: str):
    from tqdm.auto import tqdm

    return lambda it: tqdm(it, desc=desc, unit="item", leave=False, disable=None)


def _add_overwrite(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (atomically)")


def _add_basis(p: argparse.ArgumentParser) -> None:
    add_basis_options(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the coefficient positions (Omega); default %(default)s")
    add_coef_dtype_option(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="selora-convert", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from selora_serve import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("init", help="create a freshly initialised adapter for a base model",
                       description="Create a freshly initialised SeLoRA adapter for the model in --base. "
                       "A gets variance-matched Kaiming coefficients, B starts at zero (so the adapted "
                       "model equals the base) unless --random-b.")
    p.add_argument("--base", required=True, metavar="MODEL_DIR", help="local Hugging Face model directory")
    p.add_argument("--out", required=True, metavar="CKPT", help="checkpoint directory to create")
    p.add_argument("--rank", type=int, default=32, help="LoRA rank r; default %(default)s")
    p.add_argument("--alpha", type=float, default=64.0, help="LoRA alpha (scaling = alpha / r); default %(default)s")
    p.add_argument("--eta", type=float, default=0.6, help="sparse ratio in [0, 1): the fraction of spectral entries masked; default %(default)s")
    p.add_argument("--targets", default="q_proj,k_proj,v_proj,up_proj,down_proj",
                   help="comma-separated names of the linear layers to adapt; default %(default)s")
    p.add_argument("--variant", choices=("selora", "sedora"), default="selora",
                   help="selora, or sedora (DoRA magnitudes over W0 + dW; servable only merged)")
    p.add_argument("--random-b", action="store_true",
                   help="give B random coefficients too, so the adapter changes outputs (demos, benchmarks)")
    p.add_argument("--init-seed", type=int, default=None, help="seed of the initial values (default: --seed)")
    _add_basis(p)
    _add_overwrite(p)

    p = sub.add_parser("to-peft", help="materialise A and B into a standard PEFT LoRA directory",
                       description="Decode the coefficients into dense A and B and write a PEFT LoRA "
                       "directory (adapter_config.json + adapter_model.safetensors) that "
                       "peft.PeftModel.from_pretrained and vLLM load unchanged.")
    p.add_argument("ckpt", metavar="CKPT", help="SeLoRA checkpoint directory")
    p.add_argument("out", metavar="OUT", help="PEFT directory to create")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default="float32",
                   help="dtype of the dense A and B; default %(default)s")
    _add_overwrite(p)

    p = sub.add_parser("merge", help="merge the adapter into the base weights (a full HF model directory)",
                       description="Write the base model with W0 + (alpha/r) B A in place of each adapted "
                       "weight (tokenizer and config included), loadable by transformers and vLLM without LoRA. "
                       "Shards are processed one at a time.")
    p.add_argument("ckpt", metavar="CKPT", help="SeLoRA checkpoint directory")
    p.add_argument("--base", required=True, metavar="MODEL_DIR", help="the base model the adapter was made for")
    p.add_argument("out", metavar="OUT", help="model directory to create")
    _add_overwrite(p)

    p = sub.add_parser("from-peft", help="project a dense PEFT LoRA onto a spectral support (lossy)",
                       description="Fit spectral coefficients to an existing PEFT LoRA by least squares "
                       "(A and B separately) and print the relative error of the update dW = B A.")
    p.add_argument("peft_dir", metavar="PEFT_DIR", help="PEFT LoRA directory (safetensors)")
    p.add_argument("out", metavar="OUT", help="checkpoint directory to create")
    p.add_argument("--eta", type=float, required=True, help="sparse ratio in [0, 1)")
    p.add_argument("--base", metavar="MODEL_DIR", default=None,
                   help="base model directory (default: the adapter's base_model_name_or_path, if local)")
    _add_basis(p)
    _add_overwrite(p)

    p.add_argument("--bits", type=int, choices=(8, 4), default=None,
                   help="store the fitted coefficients quantised to 8 or 4 bits (format version 3; lossy)")
    p.add_argument("--group-size", type=int, default=128, help="coefficients per quantisation scale; default %(default)s")

    p = sub.add_parser("quantize", help="store the coefficients as 8- or 4-bit integers with scales (lossy)",
                       description="Write the checkpoint with its coefficients quantised (format version 3): "
                       "symmetric absmax per group of --group-size coefficients, one float16 scale per group; "
                       "4-bit values are packed two per byte. Prints the bytes before and after and the error "
                       "of the dequantised coefficients. Everything that reads checkpoints (to-peft, merge, "
                       "selora-serve) uses the dequantised adapter.")
    p.add_argument("ckpt", metavar="CKPT", help="SeLoRA checkpoint directory (unquantised)")
    p.add_argument("out", metavar="OUT", help="checkpoint directory to create")
    p.add_argument("--bits", type=int, choices=(8, 4), required=True, help="bits per coefficient")
    p.add_argument("--group-size", type=int, default=128, help="coefficients per scale; default %(default)s")
    _add_overwrite(p)

    p = sub.add_parser("inspect", help="show parameters and bytes against dense LoRA",
                       description="Validate a checkpoint and report trainable parameters, their share of "
                       "the base model, and bytes on disk against the same adapter as dense LoRA.")
    p.add_argument("ckpt", metavar="CKPT", help="SeLoRA checkpoint directory")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    return parser


def _print_inspect(info: dict) -> None:
    def fmt_int(n):
        return f"{n:,}" if isinstance(n, int) else "unknown"

    pct = info["trainable_percent"]
    rows = [
        ("checkpoint", info["path"]),
        ("basis", info["basis"] + (f" ({info['wavelet']})" if info["wavelet"] else "")),
        ("variant", info["variant"]),
        ("eta / r / alpha", f"{info['eta']} / {info['r']} / {info['alpha']:g}"),
        ("target modules", f"{', '.join(info['target_modules'])} ({info['modules']} modules)"),
        ("base model", f"{info['base_model']} (fingerprint {info['base_fingerprint'][:12]})"),
        ("trainable parameters", f"{fmt_int(info['trainable_parameters'])}"
         + (f" ({pct:.3f} % of {fmt_int(info['base_parameters'])})" if pct is not None else "")),
        ("same adapter as LoRA", f"{fmt_int(info['dense_lora_parameters'])} parameters"),
        ("bytes on disk", f"{fmt_int(info['bytes_on_disk'])} ("
         + (f"{info['coefficient_bits']}-bit coefficients, a float16 scale per {info['quant_group_size']}, "
            if info["coefficient_bits"] else "") + f"{info['coefficient_dtype']})"),
        ("dense LoRA tensors", f"{fmt_int(info['dense_lora_bytes'])} ({info['coefficient_dtype']})"),
        ("ratio", f"{info['bytes_ratio']:.3f}x"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


def run(args: argparse.Namespace) -> int:
    from selora_serve import convert
    from selora_serve.checkpoint.quant import QuantSpec
    from selora_serve.config import SeLoRAConfig

    if args.command == "init":
        config = SeLoRAConfig(
            basis=args.basis, wavelet=args.wavelet if args.basis == "wavelet" else None, eta=args.eta,
            r=args.rank, alpha=args.alpha, seed=args.seed,
            target_modules=tuple(t.strip() for t in args.targets.split(",") if t.strip()), variant=args.variant,
        )
        out = convert.init_checkpoint(
            args.base, args.out, config, random_b=args.random_b, init_seed=args.init_seed,
            coefficient_dtype=args.coef_dtype, overwrite=args.overwrite, progress=_progress("initialising"),
        )
        print(f"wrote {out}")
        _print_inspect(convert.inspect(out, verify=False))
    elif args.command == "to-peft":
        print(f"wrote {convert.to_peft(args.ckpt, args.out, dtype=args.dtype, overwrite=args.overwrite)}")
    elif args.command == "merge":
        out = convert.merge(args.ckpt, args.base, args.out, overwrite=args.overwrite, progress=_progress("merging shards"))
        print(f"wrote {out}")
    elif args.command == "from-peft":
        report = convert.from_peft(
            args.peft_dir, args.out, eta=args.eta, basis=args.basis,
            wavelet=args.wavelet if args.basis == "wavelet" else None, seed=args.seed, base_dir=args.base,
            coefficient_dtype=args.coef_dtype, overwrite=args.overwrite, progress=_progress("projecting"),
            quantization=QuantSpec(args.bits, args.group_size) if args.bits else None,
        )
        print(f"wrote {report.out}")
        print(f"relative error of dW = B A: {report.relative_error:.4f} "
              f"(worst module {report.worst_module}: {report.worst_error:.4f})")
    elif args.command == "quantize":
        report = convert.quantize(args.ckpt, args.out, bits=args.bits, group_size=args.group_size,
                                  overwrite=args.overwrite)
        print(f"wrote {report.out}: {report.bits}-bit coefficients, a float16 scale per {report.group_size}")
        print(f"bytes on disk: {report.bytes_before:,} -> {report.bytes_after:,} "
              f"({report.bytes_after / report.bytes_before:.3f}x)")
        print(f"relative error of the coefficients: {report.relative_error:.4f} (largest: {report.max_abs_error:.3g})")
    elif args.command == "inspect":
        info = convert.inspect(args.ckpt)
        print(json.dumps(info, indent=2)) if args.json else _print_inspect(info)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from selora_serve.errors import USER_ERRORS

    try:
        return run(args)
    except USER_ERRORS as exc:
        print(f"selora-convert {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"selora-convert {args.command}: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
