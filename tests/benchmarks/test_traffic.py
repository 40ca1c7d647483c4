"""benchmarks/traffic.py: rounds pool into one set of figures (total work over total time)."""

import pytest

from benchmarks.traffic import Sample, summarise, trace_models


def test_rounds_pool_rates_and_percentiles():
    fast = [Sample(ttft=0.010, latency=0.1, tokens=16, tpot=0.005)] * 4
    slow = [Sample(ttft=0.030, latency=0.3, tokens=16, tpot=0.007)] * 4
    got = summarise([(fast, 1.0), (slow, 3.0)], [2, 3])
    assert got["requests"] == 8 and got["rounds"] == 2 and got["distinct_models"] == [2, 3]
    assert got["requests_per_s"] == pytest.approx(8 / 4.0)  # not the mean of 4/1 and 4/3
    assert got["output_tokens_per_s"] == pytest.approx(128 / 4.0)
    assert got["round_output_tokens_per_s"] == [64.0, pytest.approx(64 / 3.0, abs=0.01)]
    assert got["ttft_p50_ms"] == pytest.approx(20.0) and got["itl_p50_ms"] == pytest.approx(6.0)


def test_traces_are_seeded_and_zipf_favours_the_first_names():
    names = [f"a{i}" for i in range(50)]
    assert trace_models(names, 200, "zipf", 3) == trace_models(names, 200, "zipf", 3)
    zipf = trace_models(names, 2000, "zipf", 3)
    assert zipf.count("a0") > 5 * zipf.count("a40")
    assert set(trace_models(names, 2000, "uniform", 3)) == set(names)

