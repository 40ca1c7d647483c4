"""quality_real.py's report for people: the table printed after a run and the accuracy plot.

Reads only the results document (`report`), so a stored quality-real.json can be re-shown
without training anything.
"""

from __future__ import annotations


def _half(value: float | None) -> str:
    return "  -  " if value is None else f"{value:.3f}"


def print_table(report: dict) -> None:
    hw, s = report["hardware"], report["sizes"]
    print(f"hardware: {hw['cpu']}, device {hw['device']}, {hw['torch_threads']} torch threads, torch {hw['torch']}, float32")
    print(f"base: {report['model']['dir']} ({report['model']['parameters']:,} parameters, hidden {report['model']['hidden']}, "
          f"{report['model']['layers']} layers)")
    print(f"{s['epochs']} epoch, batch {s['batch']}, AdamW + cosine, warm-up {s['warmup']} steps; sweep from {', '.join(f'{x:g}' for x in s['lrs'])} on "
          f"seed 0 (x2 ladder, up to {s['max_extend']} more per side), {s['seeds']} seeds at each method's best "
          f"validation loss; mean ± 95 % CI over seeds")
    header = (f"{'method':<18} {'params':>10} {'lr':>8} {'test accuracy':>16} {'test loss':>16} {'s/step':>7} "
              f"{'vs LoRA':>8} {'peak/rms':>8}")
    for task in s["tasks"]:
        base = report["base"][task]
        print(f"\n{task}: {report['tasks'][task]}; {s['extraction_train'] if task == 'extraction' else s['train']} train / "
              f"{s['validation']} validation / {s['test']} test; base model {base['heldout_accuracy']:.3f}")
        print(header)
        print("-" * len(header))
        for row in (r for r in report["summary"] if r["task"] == task):
            ratio = f"{row['step_vs_lora_r32']:.2f}x" if row["step_vs_lora_r32"] else "-"
            edge = "" if row["bracketed"] or row["method"] not in s["methods"] else " (edge)"
            print(f"{row['method']:<18} {row['trainable_params']:>10,} {row['lr']:>8g} "
                  f"{row['heldout_accuracy_mean']:>7.3f} ± {_half(row['heldout_accuracy_ci95'])} "
                  f"{row['heldout_loss_mean']:>7.3f} ± {_half(row['heldout_loss_ci95'])} {row['s_per_step']:>7.2f} {ratio:>8} "
                  f"{row['update_peak_over_rms']:>8.1f}{edge}  (n={row['seeds']})")
        for c in (c for c in report["comparisons"] if c["task"] == task):
            loss = (f"; loss {c['loss_diff']:+.3f} ± {c['loss_ci95']:.3f}: {c['loss_verdict']}"
                    if "loss_diff" in c else "")  # documents before paired losses have none
            print(f"  {c['method']} - {c['against']}: {c['points']:+.1f} ± {c['ci95']:.1f} points (paired, n={c['seeds']}): "
                  f"{c['verdict']}{loss}")
        print("  sweep (seed 0), test accuracy / validation loss by lr:")
        for method in s["methods"]:
            cells = [f"{r['lr']:g}: {r['heldout_accuracy']:.3f} / {r['validation_loss']:.3f}"
                     for r in sorted(report["runs"], key=lambda r: r["lr"])
                     if r["task"] == task and r["method"] == method and r["phase"] == "sweep"]
            print(f"    {method:<16} " + "   ".join(cells))
    print(f"(total {report['seconds']:.0f} s this process)")


def plot(report: dict, path: str) -> None:
    """Per task, one row per method: every seed's test accuracy (dots) and, with 3 or more seeds,
    the mean and its 95 % CI (bar); rows labelled with the trainable parameters and the rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    task_names = report["sizes"]["tasks"]
    most = max(sum(1 for r in report["summary"] if r["task"] == t) for t in task_names)
    fig, axes = plt.subplots(1, len(task_names), figsize=(6.5 * len(task_names), 1.2 + 0.4 * most), squeeze=False)
    for ax, task in zip(axes[0], task_names):
        rows = [r for r in report["summary"] if r["task"] == task]
        for y, row in enumerate(rows):
            seeds = [r["heldout_accuracy"] for r in report["runs"]
                     if r["task"] == task and r["method"] == row["method"] and r["lr"] == row["lr"]]
            ax.plot(seeds, [y] * len(seeds), "o", color="grey", alpha=0.5, ms=4)
            if row["seeds"] >= 3:
                ax.errorbar(row["heldout_accuracy_mean"], y, xerr=row["heldout_accuracy_ci95"], fmt="D", color="C0",
                            capsize=4)
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels([f"{r['method']} ({r['trainable_params'] / 1e6:.2f}M, lr {r['lr']:g})" for r in rows],
                           fontsize=7)
        ax.invert_yaxis()
        ax.axvline(report["base"][task]["heldout_accuracy"], color="grey", ls=":")
        ax.set_xlim(0, 1)
        ax.set_xlabel("test accuracy (exact answer); dots: seeds, bars: mean ± 95 % CI")
        ax.set_title(f"SmolLM2-135M-Instruct, {task}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json
    from pathlib import Path

    parser = argparse.ArgumentParser(description="Show a stored quality_real.py results document: its table, and "
                                     "(--plot) its plot. Trains nothing.")
    parser.add_argument("json", type=Path, help="the document quality_real.py wrote (--json)")
    parser.add_argument("--plot", metavar="PNG", default=None, help="also draw each method's test accuracy per task here (seeds, mean ± 95 %% CI)")
    args = parser.parse_args(argv)
    try:
        report = json.loads(args.json.read_text())
        print_table(report)
    except (OSError, ValueError, KeyError, TypeError) as e:
        parser.error(f"{args.json}: not a quality_real.py results document ({type(e).__name__}: {e})")
    if args.plot:
        plot(report, args.plot)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
