"""A tiny Llama-architecture model and BPE tokenizer, built locally (no model hub).

Used by the tests, the demo server and the CPU benchmarks. Deterministic for a given seed:
the tokenizer is trained on a fixed synthetic corpus, the weights come from a seeded generator.
Sizes satisfy vLLM's CPU backend (head_dim 32 is a supported attention head size).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .atomic import atomic_directory

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

_WORDS = (
    "the a an of to in is was for on that with as by at from it this be are or his her they "
    "we you he she not but have had has one all were when there can more if no out so said "
    "what up its about into than them only other new some could time these two may then do "
    "first any my now such like our over man me even most made after also did many before "
    "must through back years where much your way well down should because each just those "
    "people how too little state good very make world still own see men work long get here "
    "between both life being under never day same another know while last might us great old "
    "year off come since against go came right used take three instruction input response "
    "below describes task write appropriately completes request answer question number colour "
    "red green blue cat dog bird tree river mountain city house water fire earth air light"
).split()


@dataclass(frozen=True)
class TinySpec:
    hidden_size: int = 128
    intermediate_size: int = 256
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    vocab_size: int = 512
    max_position_embeddings: int = 512
    initializer_range: float = 0.05


def _corpus(seed: int, lines: int = 2000) -> list[str]:
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(_WORDS), (lines, 12), generator=gen)
    return [" ".join(_WORDS[i] for i in row.tolist()) for row in idx]


def build_tokenizer(vocab_size: int, seed: int = 0):
    """A byte-level BPE tokenizer wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_model(out_dir: str | Path, *, seed: int = 0, spec: TinySpec = TinySpec(), overwrite: bool = False) -> Path:
    """Write a tiny LlamaForCausalLM (float32 safetensors) and its tokenizer to `out_dir`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer(spec.vocab_size, seed)
    config = LlamaConfig(
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        vocab_size=len(tokenizer),
        max_position_embeddings=spec.max_position_embeddings,
        initializer_range=spec.initializer_range,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
    return Path(out_dir)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m selora_serve.tiny",
        description="Build a tiny local Llama-architecture model and tokenizer (for demos and tests; no download).",
    )
    parser.add_argument("out", help="model directory to create")
    parser.add_argument("--seed", type=int, default=0, help="weight and tokenizer seed; default %(default)s")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    args = parser.parse_args(argv)
    print(f"wrote {build_tiny_model(args.out, seed=args.seed, overwrite=args.overwrite)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
