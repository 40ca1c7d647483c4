"""Adapter quality at matched trainable parameters, on CPU in minutes: SeLoRA-W, SeLoRA-F, LoRA.

The setting, all synthetic and built locally (no hub, no downloads):

1. Base model: the tiny Llama of `selora_serve.tiny` (hidden 128, 2 layers, BPE vocabulary
   ~500), pre-trained in full (every weight) on a *copy* task: "request w1 w2 w3 w4 so" ->
   " w1 w2 w3 w4" + eos, over the ~80 words the tiny tokenizer keeps as single tokens.
2. New task, adapted with each method: a *substitution cipher*. A seeded permutation f of a
   pool of words; "question w1 .. w4 so" -> " f(w1) .. f(w4)" + eos. The held-out set has
   word sequences never seen in training, so exact match needs the mapping learned per word,
   not memorised sequences. (Examples are built from token ids with the loss on the answer
   only; the Alpaca template would cost ~90 tokens per example with the tiny tokenizer.)
3. Methods (targets q,k,v,up,down; alpha = 2 r as in the paper's r=32, alpha=64):
   SeLoRA-W (haar, eta=0.6, r=32), SeLoRA-F (eta=0.6, r=32), LoRA r=32, and LoRA at the rank
   whose parameter count is nearest SeLoRA's (0.4 x 32 -> 13). Same learning rate, schedule,
   data order and steps for all; seeds vary Omega, the initial values and the data order.
4. Metrics on the held-out set: mean response-token loss, exact match (teacher-forced argmax
   equals the answer at every response position including eos, which is exactly "greedy
   decoding reproduces the answer"), and the median training step time relative to LoRA r=32.

Prints a table (hardware and sizes stated) and, as its last line, one JSON document; with
--json PATH also writes it there atomically. --quick is a CI-sized smoke run (< 60 s).
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

try:  # as a module (tests) or as a script
    from benchmarks.publish import publish
except ImportError:
    from publish import publish
from selora_serve.config import SeLoRAConfig
from selora_serve.spectral.omega import num_coefficients
from selora_serve.tiny import _WORDS, build_tiny_model
from selora_serve.training.data import IGNORE_INDEX, Example, collate, pad_token_id
from selora_serve.training.inject import inject, trainable_parameters
from selora_serve.training.job import load_model, load_tokenizer
from selora_serve.training.layers import AdapterSpec
from selora_serve.training.trainer import TrainConfig, fit

TARGETS = ("q_proj", "k_proj", "v_proj", "up_proj", "down_proj")
# Prompts are "request|question w1 .. w4 so", answers " a1 .. a4" + eos, built from token ids: the
# Alpaca template costs ~90 tokens with the tiny tokenizer and would make every step ~10x
# slower without telling the methods apart any better.
COPY_WORD, CIPHER_WORD, SEPARATOR = "request", "question", "so"


@dataclass(frozen=True)
class Sizes:
    pretrain_examples: int = 8192
    pretrain_epochs: int = 1
    pretrain_batch: int = 64
    pretrain_lr: float = 3e-3
    pool: int = 48  # words the cipher permutes
    words: int = 4  # words per example
    train_examples: int = 512
    eval_examples: int = 256
    epochs: int = 3
    batch: int = 16
    lr: float = 2e-3
    rank: int = 32
    eta: float = 0.6


QUICK = Sizes(pretrain_examples=2048, pool=24, train_examples=128, eval_examples=64, epochs=2)


def single_token_words(tokenizer) -> dict[str, int]:
    """{word: id} of vocabulary words that are one token after a space."""
    out = {}
    for w in dict.fromkeys(_WORDS):
        ids = tokenizer(" " + w, add_special_tokens=False)["input_ids"]
        if len(ids) == 1:
            out[w] = ids[0]
    return out


def make_example(task: int, sep: int, words: list[int], answer: list[int], eos: int, where: str) -> Example:
    prompt = [task, *words, sep]
    response = [*answer, eos]
    return Example(tuple(prompt + response), (IGNORE_INDEX,) * len(prompt) + tuple(response), where)


def copy_task(vocab: dict[str, int], n: int, words: int, eos: int, seed: int) -> list[Example]:
    g = torch.Generator().manual_seed(seed)
    ids = [i for w, i in vocab.items() if w not in (COPY_WORD, CIPHER_WORD, SEPARATOR)]
    out = []
    for k in range(n):
        seq = [ids[j] for j in torch.randint(len(ids), (words,), generator=g).tolist()]
        out.append(make_example(vocab[COPY_WORD], vocab[SEPARATOR], seq, seq, eos, f"copy:{k}"))
    return out


def cipher_task(vocab: dict[str, int], sizes: Sizes, eos: int, seed: int) -> tuple[list[Example], list[Example]]:
    """(train, held-out); a seeded permutation of a word pool; held-out sequences are unseen."""
    g = torch.Generator().manual_seed(seed)
    ids = [i for w, i in vocab.items() if w not in (COPY_WORD, CIPHER_WORD, SEPARATOR)]
    pool = [ids[j] for j in torch.randperm(len(ids), generator=g)[: sizes.pool].tolist()]
    mapping = dict(zip(pool, [pool[j] for j in torch.randperm(len(pool), generator=g).tolist()]))
    seen: set[tuple[int, ...]] = set()
    out = []
    while len(out) < sizes.train_examples + sizes.eval_examples:
        seq = tuple(pool[j] for j in torch.randint(len(pool), (sizes.words,), generator=g).tolist())
        if seq not in seen:
            seen.add(seq)
            out.append(make_example(vocab[CIPHER_WORD], vocab[SEPARATOR], list(seq), [mapping[t] for t in seq], eos, f"cipher:{len(out)}"))
    return out[: sizes.train_examples], out[sizes.train_examples:]


@torch.no_grad()
def evaluate(model, examples: list[Example], pad_id: int, batch: int = 64) -> tuple[float, float]:
    """(mean response-token loss, exact-match rate) with teacher forcing."""
    model.eval()
    loss_sum, tokens, exact = 0.0, 0, 0
    for i in range(0, len(examples), batch):
        b = collate(examples[i : i + batch], pad_id)
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1].float()
        labels = b["labels"][:, 1:]
        mask = labels != IGNORE_INDEX
        loss_sum += torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
        ).item()
        tokens += int(mask.sum())
        correct = (logits.argmax(-1) == labels) | ~mask
        exact += int(correct.all(dim=1).sum())
    return loss_sum / tokens, exact / len(examples)


def pretrain(base_dir: Path, tokenizer, vocab: dict[str, int], sizes: Sizes, progress: bool):
    model = load_model(base_dir)
    for p in model.parameters():
        p.requires_grad_(True)
    examples = copy_task(vocab, sizes.pretrain_examples, sizes.words, tokenizer.eos_token_id, seed=1234)
    config = TrainConfig(epochs=sizes.pretrain_epochs, lr=sizes.pretrain_lr, batch_size=sizes.pretrain_batch, warmup=0.05, seed=0)
    result = fit(model, examples, config, pad_id=pad_token_id(tokenizer), progress=progress)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval(), result


def methods(sizes: Sizes, shapes: list[tuple[int, int]]) -> list[tuple[str, AdapterSpec]]:
    r, eta = sizes.rank, sizes.eta
    selora_params = sum(num_coefficients(eta, (r, i)) + num_coefficients(eta, (o, r)) for i, o in shapes)
    matched = min(range(1, r + 1), key=lambda q: abs(q * sum(i + o for i, o in shapes) - selora_params))

    def cfg(rank: int, **kw) -> SeLoRAConfig:
        return SeLoRAConfig(r=rank, alpha=2.0 * rank, eta=eta, target_modules=TARGETS, **kw)

    return [
        (f"SeLoRA-W haar eta={eta} r={r}", AdapterSpec(cfg(r, basis="wavelet", wavelet="haar"))),
        (f"SeLoRA-F eta={eta} r={r}", AdapterSpec(cfg(r, basis="fourier"))),
        (f"LoRA r={r}", AdapterSpec(cfg(r), dense=True)),
        (f"LoRA r={matched} (matched)", AdapterSpec(cfg(matched), dense=True)),
    ]


def with_seed(spec: AdapterSpec, seed: int) -> AdapterSpec:
    from dataclasses import replace

    return replace(spec, config=replace(spec.config, seed=seed))


def run(sizes: Sizes, seeds: list[int], progress: bool) -> dict:
    torch.manual_seed(0)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        base_dir = build_tiny_model(Path(tmp) / "tiny", seed=0)
        tokenizer = load_tokenizer(base_dir)
        vocab = single_token_words(tokenizer)
        base, pre = pretrain(base_dir, tokenizer, vocab, sizes, progress)
    pad = pad_token_id(tokenizer)
    copy_eval = copy_task(vocab, 256, sizes.words, tokenizer.eos_token_id, seed=999)
    train_ex, eval_ex = cipher_task(vocab, sizes, tokenizer.eos_token_id, seed=7)
    base_copy = evaluate(base, copy_eval, pad)
    base_cipher = evaluate(base, eval_ex, pad)
    shapes = [(m.in_features, m.out_features) for n, m in base.named_modules()
              if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] in TARGETS]
    runs = []
    for seed in seeds:
        for label, spec in methods(sizes, shapes):  # interleaved, so load drifts hit all methods alike
            model = copy.deepcopy(base)
            inject(model, with_seed(spec, seed))
            params = sum(p.numel() for p in trainable_parameters(model).values())
            config = TrainConfig(epochs=sizes.epochs, lr=sizes.lr, batch_size=sizes.batch, warmup=0.05, seed=seed)
            result = fit(model, train_ex, config, pad_id=pad, progress=False)
            loss, exact = evaluate(model, eval_ex, pad)
            runs.append({
                "method": label, "seed": seed, "trainable_parameters": params, "eval_loss": loss, "exact_match": exact,
                "train_loss_first": result.losses[0], "train_loss_last": result.losses[-1],
                "median_step_seconds": statistics.median(result.step_seconds[1:] or result.step_seconds),
                "median_step_cpu_seconds": statistics.median(result.step_cpu_seconds[1:] or result.step_cpu_seconds),
                "steps": result.steps,
            })
            if progress:
                print(f"  {label:<30} seed {seed}: loss {loss:.4f}, exact {exact:.3f}", file=sys.stderr)
    return {
        "benchmark": "quality",
        "hardware": {
            "cpu": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
        },
        "sizes": asdict(sizes),
        "model": {"hidden": base.config.hidden_size, "layers": base.config.num_hidden_layers,
                  "vocab": base.config.vocab_size, "parameters": sum(p.numel() for p in base.parameters()),
                  "cipher_pool": sizes.pool, "single_token_words": len(vocab)},
        "pretrain": {"steps": pre.steps, "loss_first": pre.losses[0], "loss_last": pre.losses[-1],
                     "copy_eval_loss": base_copy[0], "copy_exact_match": base_copy[1],
                     "cipher_eval_loss_before": base_cipher[0], "cipher_exact_match_before": base_cipher[1]},
        "seeds": seeds,
        "runs": runs,
        "summary": summarise(runs),
        "seconds": time.perf_counter() - t_start,
    }


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(runs: list[dict]) -> list[dict]:
    by_method: dict[str, list[dict]] = {}
    for r in runs:
        by_method.setdefault(r["method"], []).append(r)
    reference = [r for m, rs in by_method.items() if m.startswith("LoRA") and "matched" not in m for r in rs]
    ref_cpu = statistics.mean(r["median_step_cpu_seconds"] for r in reference)
    out = []
    for method, rs in by_method.items():
        loss, loss_sd = mean_sd([r["eval_loss"] for r in rs])
        exact, exact_sd = mean_sd([r["exact_match"] for r in rs])
        step = statistics.mean(r["median_step_seconds"] for r in rs)
        cpu = statistics.mean(r["median_step_cpu_seconds"] for r in rs)
        out.append({
            "method": method, "trainable_parameters": rs[0]["trainable_parameters"], "runs": len(rs),
            "eval_loss_mean": loss, "eval_loss_sd": loss_sd, "exact_match_mean": exact, "exact_match_sd": exact_sd,
            "step_ms": 1000 * step, "step_cpu_ms": 1000 * cpu, "step_cpu_vs_lora": cpu / ref_cpu,
        })
    return out


def print_table(report: dict) -> None:
    hw, m, s, pre = report["hardware"], report["model"], report["sizes"], report["pretrain"]
    print(f"hardware: {hw['cpu']}, {hw['torch_threads']} torch threads, torch {hw['torch']} (CPU, float32)")
    print(f"base: tiny Llama, hidden {m['hidden']}, {m['layers']} layers, vocab {m['vocab']}, {m['parameters']:,} parameters; "
          f"pre-trained on copying ({pre['steps']} steps): copy exact match {pre['copy_exact_match']:.3f}")
    print(f"task: substitution cipher over {s['pool']} words, {s['words']} words per example; {s['train_examples']} train / "
          f"{s['eval_examples']} held-out sequences; {s['epochs']} epochs, batch {s['batch']}, lr {s['lr']}, AdamW + cosine; "
          f"seeds {report['seeds']}; before adapting: exact match {pre['cipher_exact_match_before']:.3f}, "
          f"loss {pre['cipher_eval_loss_before']:.3f}")
    header = (f"{'method':<30} {'params':>8} {'held-out loss':>17} {'exact match':>15} "
              f"{'step ms':>8} {'cpu ms':>7} {'cpu vs LoRA r=' + str(s['rank']):>16}")
    print(header)
    print("-" * len(header))
    for row in report["summary"]:
        print(f"{row['method']:<30} {row['trainable_parameters']:>8,} "
              f"{row['eval_loss_mean']:>9.4f} ± {row['eval_loss_sd']:.4f} "
              f"{row['exact_match_mean']:>7.3f} ± {row['exact_match_sd']:.3f} "
              f"{row['step_ms']:>8.1f} {row['step_cpu_ms']:>7.1f} {row['step_cpu_vs_lora']:>15.2f}x")
    print(f"(mean ± sd over seeds; step times are medians per run, wall and process CPU time, on a "
          f"shared machine: trust the CPU column more; total {report['seconds']:.0f} s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Adapter quality at matched trainable parameters (SeLoRA-W, SeLoRA-F, LoRA) on a "
        "synthetic task, CPU. Prints a table and, last, one JSON line.",
    )
    parser.add_argument("--quick", action="store_true", help="CI-sized smoke run (< 60 s): small sets, one seed")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3, or 1 with --quick)")
    parser.add_argument("--json", metavar="PATH", default=None, help="also write the JSON document here (atomically)")
    parser.add_argument("--lr", type=float, default=None, help="adapter learning rate for every method (default 2e-3)")
    parser.add_argument("--progress", action="store_true", help="show progress on stderr")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else Sizes()
    if args.lr is not None:
        from dataclasses import replace

        sizes = replace(sizes, lr=args.lr)
    seeds = list(range(args.seeds if args.seeds is not None else (1 if args.quick else 3)))
    report = run(sizes, seeds, args.progress)
    report["quick"] = args.quick
    publish(report, table=print_table, json_path=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
