"""benchmarks/density.py's own logic: the two-tier LRU replay, the per-round medians, its refusals
(the N = 1,000 run itself is a benchmark, not a test)."""

import pytest

from benchmarks import density


def test_simulate_replays_both_lru_tiers_after_the_warm_traffic():
    # slots 1, host 2: after a, b, c the slot holds c and the host cache b, c
    assert density.simulate(["a", "b", "c", "a"], 1, 2, ["a", "b", "c"]) == {"activations": 4, "disk_loads": 4}
    assert density.simulate(["c", "c", "b"], 1, 2, ["a", "b", "c"]) == {"activations": 1, "disk_loads": 0}
    assert density.simulate(["x"], 8, 1000) == {"activations": 1, "disk_loads": 1}


def _record(system, rnd, tokens, popularity="zipf", comparison="budget"):
    return {"comparison": comparison, "popularity": popularity, "system": system, "round": rnd,
            "output_tokens_per_s": tokens, "ttft_p50_ms": 1.0, "ttft_p99_ms": 1.0, "rss_bytes": 1,
            "rss_adapters_bytes": 1}


def test_ratios_are_medians_of_per_round_ratios_and_name_the_targets():
    records = [_record("selora", 0, 9), _record("dense", 0, 10), _record("selora", 1, 12), _record("dense", 1, 10),
               _record("selora", 2, 5), _record("dense", 2, 10), _record("selora", 3, 1)]  # round 3 incomplete
    ratios = density.summarise(records)["ratios"]["budget/zipf"]
    assert ratios["output_tokens_per_s"] == 0.9 and ratios["rounds"] == 3
    assert ratios["targets_met"] == {"output_tokens_per_s": False, "ttft_p99_ms": False}


def test_refusals(capsys):
    with pytest.raises(SystemExit):
        density.parse_args(["--comparisons", "budget,bogus"])
    assert "--comparisons: expected some of budget, resident" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="run selora first"):
        density.host_settings("budget", "dense", None, None, 16, None)
    assert density.host_settings("budget", "selora", None, None, 16, None) == {"host_cache_bytes": 64 << 30}
