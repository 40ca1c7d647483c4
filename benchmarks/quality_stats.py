"""The statistics of benchmarks/quality_real.py: per-method summaries with 95 % confidence
intervals, and differences between methods paired by seed with a verdict.

    summarise(runs, task, chosen_lrs) -> rows   mean, sd, 95 % CI of test accuracy and loss
    compare(runs, task, chosen_lrs) -> rows     SeLoRA-W vs LoRA (matched, r32), SeLoRA-F vs W, ...
    ci95(values) -> (mean, half-width)          Student t (None for a single value)

Runs of one seed share the data order across methods, so paired differences remove that part
of the seed-to-seed variance.
"""

from __future__ import annotations

import statistics


def parse_method(method: str) -> tuple[str, int | None, float, bool]:
    """"selora-w-haar-r16-init4" -> ("selora-w-haar", 16, 4.0, False): the base method, a rank of a
    budget point (None: the default), A's initial scale (1: as initialised), and whether it
    trains with the projected optimiser ("-proj": `training/projected.py`)."""
    name, init, projected = method, 1.0, False
    if name.endswith("-proj"):
        name, projected = name[: -len("-proj")], True
    head, _, tail = name.rpartition("-init")
    if head and tail.replace(".", "", 1).isdigit():
        name, init = head, float(tail)
    head, _, tail = name.rpartition("-r")
    if head.startswith("selora") and tail.isdigit():
        return head, int(tail), init, projected
    return name, None, init, projected


def base_method(method: str) -> str:
    return parse_method(method)[0]

# --- statistics ----------------------------------------------------------------------------------

# Student t, two-sided 95 %, by degrees of freedom (1.96 beyond the table).
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 19: 2.093, 24: 2.064, 29: 2.045}


def ci95(values: list[float]) -> tuple[float, float | None]:
    """(mean, half-width of the 95 % confidence interval of the mean; None for one value)."""
    n = len(values)
    mean = statistics.mean(values)
    if n < 2:
        return mean, None
    t = _T95.get(n - 1) or next((v for k, v in sorted(_T95.items()) if k >= n - 1), 1.96)
    return mean, t * statistics.stdev(values) / n ** 0.5


def verdict(diff: float, half: float) -> str:
    return "beats" if diff - half > 0 else "loses" if diff + half < 0 else "ties"


def summarise(runs: list[dict], task: str, lrs: dict[str, float]) -> list[dict]:
    """Per method of `task`, over its seeds at its chosen rate: mean, sd and 95 % CI of the scores."""
    mine = [r for r in runs if r.get("task", "addition") == task]
    lora = [r for r in mine if r["method"] == "lora-r32" and r["lr"] == lrs.get("lora-r32")]
    lora_step = statistics.median(r["s_per_step"] for r in lora) if lora else None
    out = []
    for method in dict.fromkeys(r["method"] for r in mine):
        lr = lrs.get(method) or lrs.get(base_method(method))
        rs = sorted((r for r in mine if r["method"] == method and r["lr"] == lr), key=lambda r: r["seed"])
        if not rs:
            continue
        acc, acc_half = ci95([r["heldout_accuracy"] for r in rs])
        loss, loss_half = ci95([r["heldout_loss"] for r in rs])
        step = statistics.median(r["s_per_step"] for r in rs)
        tried = sorted({r["lr"] for r in mine if r["method"] == method and r["phase"] == "sweep"})
        out.append({
            "task": task, "method": method, "lr": lr, "seeds": len(rs), "rank": rs[0]["rank"], "eta": rs[0].get("eta"),
            "trainable_params": rs[0]["trainable_params"],
            "heldout_accuracy_mean": acc, "heldout_accuracy_ci95": acc_half,
            "heldout_accuracy_sd": statistics.stdev([r["heldout_accuracy"] for r in rs]) if len(rs) > 1 else 0.0,
            "heldout_loss_mean": loss, "heldout_loss_ci95": loss_half,
            "s_per_step": step, "step_vs_lora_r32": step / lora_step if lora_step else None,
            "lrs_tried": tried, "bracketed": bool(tried) and tried[0] < lr < tried[-1],
            "update_peak_over_rms": statistics.mean(r["update_peak_over_rms"] for r in rs),
            "peak_memory_mib": max(r["peak_memory_mib"] for r in rs),
        })
    return out


COMPARISONS = (("selora-w-haar", "lora-matched"), ("selora-w-db4", "lora-matched"), ("selora-w-haar", "lora-r32"),
               ("selora-w-db4", "lora-r32"), ("selora-f", "selora-w-haar"), ("selora-f", "selora-w-db4"),
               ("selora-f", "lora-matched"), ("selora-f-proj", "selora-f"), ("selora-f-proj", "selora-w-haar"),
               ("selora-f-proj", "selora-w-db4"), ("selora-f-proj", "lora-matched"),
               # SeLoRA-W's eta / rank trade at the same parameter count (budget points, haar's rate)
               ("selora-w-haar-r16", "selora-w-haar"), ("selora-w-haar-r64", "selora-w-haar"),
               ("selora-w-haar-r64", "lora-matched"))


def compare(runs: list[dict], task: str, lrs: dict[str, float]) -> list[dict]:
    """Differences paired by seed, each method at its chosen rate: test accuracy in points (`points`,
    `ci95`, `verdict`) and test loss per answer token (`loss_diff`, `loss_ci95`, `loss_verdict`;
    lower is better, so "beats" means a lower loss). The loss varies less between seeds than
    accuracy at a threshold does, so it resolves smaller differences."""
    def by_seed(method):
        lr = lrs.get(method) or lrs.get(base_method(method))  # budget points train at their base's rate
        return {r["seed"]: r for r in runs
                if r.get("task", "addition") == task and r["method"] == method and r["lr"] == lr}

    out = []
    for a, b in COMPARISONS:
        sa, sb = by_seed(a), by_seed(b)
        seeds = sorted(set(sa) & set(sb))
        if len(seeds) < 2:
            continue
        diff, half = ci95([100 * (sa[s]["heldout_accuracy"] - sb[s]["heldout_accuracy"]) for s in seeds])
        loss, loss_half = ci95([sa[s]["heldout_loss"] - sb[s]["heldout_loss"] for s in seeds])
        out.append({"task": task, "method": a, "against": b, "seeds": len(seeds), "points": diff, "ci95": half,
                    "verdict": verdict(diff, half), "loss_diff": loss, "loss_ci95": loss_half,
                    "loss_verdict": verdict(-loss, loss_half)})
    return out


