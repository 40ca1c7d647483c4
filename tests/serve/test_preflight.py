"""Start-up refusals: a model vLLM's CPU engine would start with and then fail on is refused
before vLLM starts, with one line naming the model, the field and what the engine supports."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import pytest

from selora_serve.serve.cli import main
from selora_serve.serve.preflight import attention_problem, head_size
from selora_serve.vllm_ext.engine_support import AttentionLimits

LIMITS = AttentionLimits("CPU_ATTN", (32, 64), ("float32", "bfloat16"))


def test_head_size_as_vllm_computes_it():
    assert head_size(SimpleNamespace(head_dim=64, hidden_size=576, num_attention_heads=9)) == (64, "the config's head_dim")
    assert head_size(SimpleNamespace(head_dim=None, hidden_size=96, num_attention_heads=4)) == (
        24, "hidden_size 96 / num_attention_heads 4")


def test_attention_problem_names_value_and_supported_sizes():
    bad = SimpleNamespace(hidden_size=96, num_attention_heads=4)
    assert attention_problem(bad, "float32", LIMITS) == (
        "attention head size 24 (hidden_size 96 / num_attention_heads 4) is not supported by vLLM's CPU_ATTN "
        "backend, which supports head sizes 32, 64: the engine would start and fail on the first request")
    good = SimpleNamespace(head_dim=64, hidden_size=576, num_attention_heads=9)
    assert attention_problem(good, "float32", LIMITS) is None
    assert attention_problem(good, "auto", LIMITS) is None
    assert attention_problem(good, "float16", LIMITS) == (
        "--dtype float16 is not supported by vLLM's CPU_ATTN backend (float32, bfloat16)")


def test_the_installed_cpu_backend_is_asked():
    pytest.importorskip("vllm")
    from selora_serve.vllm_ext.engine_support import cpu_attention_limits

    limits = cpu_attention_limits()
    assert 32 in limits.head_sizes and 64 in limits.head_sizes and 24 not in limits.head_sizes
    assert "float32" in limits.dtypes


@pytest.fixture(scope="module")
def head24_model(tmp_path_factory):
    from selora_serve.tiny import TinySpec, build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("h24") / "head24",
                            spec=TinySpec(hidden_size=96, intermediate_size=192, num_attention_heads=4))


def test_selora_serve_refuses_head_dim_24_before_vllm_starts(head24_model, checkpoints, tmp_path, capsys):
    pytest.importorskip("vllm")
    shutil.copytree(checkpoints["haar"], tmp_path / "haar")
    assert main(["--model", str(head24_model), "--adapters", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"selora-serve: error: {head24_model}: attention head size 24 (the config's head_dim) "
                             "is not supported by vLLM's CPU_ATTN backend, which supports head sizes 32, 64, ")
    # --merge checks the base before spending time on the merge
    assert main(["--model", str(head24_model), "--merge", str(checkpoints["haar"]),
                 "--merge-cache", str(tmp_path / "cache")]) == 2
    assert "attention head size 24" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()
