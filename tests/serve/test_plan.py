"""`selora-serve` options -> vLLM argv and environment (no server started)."""

from __future__ import annotations

import shutil

import pytest

from selora_serve.serve.cli import build_parser, plan_from_args
from selora_serve.serve.plan import has_option, merged_dir, option_value, plan_guard, plan_store, supported_rank


def test_supported_rank_rounds_up():
    assert [supported_rank(r) for r in (1, 2, 8, 9, 33, 512)] == [1, 8, 8, 16, 64, 512]
    with pytest.raises(ValueError, match="rank 1000 exceeds vLLM's largest supported --max-lora-rank 512"):
        supported_rank(1000)


def test_store_defaults_derive_from_the_store(checkpoints, tiny_model, tmp_path):
    for name, ckpt in checkpoints.items():
        shutil.copytree(ckpt, tmp_path / name)
    launch = plan_store(str(tiny_model), [str(tmp_path)], cpu=True)
    argv = launch.argv
    assert argv[:2] == ["--model", str(tiny_model)] and "--enable-lora" in argv
    assert argv[argv.index("--max-lora-rank") + 1] == "8"
    assert argv[argv.index("--max-loras") + 1] == "3" and argv[argv.index("--max-cpu-loras") + 1] == "3"
    assert argv[argv.index("--dtype") + 1] == "float32"
    assert argv[argv.index("--kv-cache-memory-bytes") + 1] == "2G" and "--gpu-memory-utilization" not in argv
    assert launch.env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "1"
    assert launch.env["SELORA_ADAPTER_DIRS"] == str(tmp_path.resolve())


def test_user_options_win_and_pass_through(checkpoints, tiny_model, tmp_path):
    shutil.copytree(checkpoints["haar"], tmp_path / "haar")
    user = ["--max-loras=6", "--dtype", "bfloat16", "--tensor-parallel-size", "2", "--max-lora-rank", "64"]
    argv = plan_store(str(tiny_model), [str(tmp_path)], user, cpu=True).argv
    assert argv[-len(user):] == user
    assert argv.count("--dtype") == 1 and not any(a.startswith("--max-loras") for a in argv[:-len(user)])
    on_gpu = plan_store(str(tiny_model), [str(tmp_path)], cpu=False).argv
    assert "--dtype" not in on_gpu and "--kv-cache-memory-bytes" not in on_gpu  # vLLM's own defaults
    # A fraction of memory the user chose replaces the KV cache default.
    theirs = plan_store(str(tiny_model), [str(tmp_path)], ["--gpu-memory-utilization", "0.5"], cpu=True).argv
    assert "--kv-cache-memory-bytes" not in theirs
    assert argv[argv.index("--max-cpu-loras") + 1] == "6"


def test_cli_splits_own_options_from_vllm_options(checkpoints, tiny_model, tmp_path):
    shutil.copytree(checkpoints["haar"], tmp_path / "haar")
    args, rest = build_parser().parse_known_args(
        ["--model", str(tiny_model), "--adapters", str(tmp_path), "--port", "9000", "--max-model-len", "512"]
    )
    assert rest == ["--port", "9000", "--max-model-len", "512"]
    launch = plan_from_args(args, rest)
    assert has_option(launch.argv, "--port") and has_option(launch.argv, "--enable-lora")
    with pytest.raises(ValueError, match=r"--adapters DIR is required \(or --merge CKPT, or --demo\)"):
        plan_from_args(build_parser().parse_args(["--model", "m"]), [])
    with pytest.raises(ValueError, match=r"--model BASE is required \(or use --demo\)"):
        plan_from_args(build_parser().parse_args(["--adapters", str(tmp_path)]), [])
    with pytest.raises(ValueError, match="--merge serves one merged adapter with LoRA disabled; it does not take "
                       "--adapters, --host-cache-form or --host-cache-bytes"):
        plan_from_args(build_parser().parse_args(["--model", "m", "--merge", "c", "--adapters", str(tmp_path)]), [])
    for extra in (["--host-cache-form", "spectral"], ["--host-cache-bytes", "1G"]):
        with pytest.raises(ValueError, match="does not take --adapters, --host-cache-form or --host-cache-bytes"):
            plan_from_args(build_parser().parse_args(["--model", "m", "--merge", "c", *extra]), [])


def test_host_cache_form_reaches_the_worker_environment(checkpoints, tiny_model, tmp_path, capsys):
    from selora_serve.vllm_ext.host_cache import ENV_HOST_CACHE_FORM, host_cache_form

    shutil.copytree(checkpoints["haar"], tmp_path / "haar")
    args = ["--model", str(tiny_model), "--adapters", str(tmp_path)]
    assert ENV_HOST_CACHE_FORM not in plan_from_args(build_parser().parse_args(args), []).env
    launch = plan_from_args(build_parser().parse_args(args + ["--host-cache-form", "spectral"]), [])
    assert host_cache_form(launch.env) == "spectral"
    assert "host cache holds SeLoRA adapters in spectral form" in launch.notes
    assert host_cache_form({}) == "dense" and host_cache_form({ENV_HOST_CACHE_FORM: " Dense "}) == "dense"
    with pytest.raises(ValueError, match="SELORA_HOST_CACHE_FORM='coefficients': expected one of dense, spectral"):
        host_cache_form({ENV_HOST_CACHE_FORM: "coefficients"})
    with pytest.raises(SystemExit):
        build_parser().parse_args(args + ["--host-cache-form", "sparse"])
    assert "invalid choice: 'sparse'" in capsys.readouterr().err


def test_host_cache_bytes_bounds_the_cache_instead_of_a_count(checkpoints, tiny_model, tmp_path):
    from selora_serve.serve.plan import HOST_COUNT_UNDER_BYTES
    from selora_serve.vllm_ext.host_cache import ENV_HOST_CACHE_BYTES, host_cache_bytes

    shutil.copytree(checkpoints["haar"], tmp_path / "haar")
    args = ["--model", str(tiny_model), "--adapters", str(tmp_path), "--host-cache-form", "spectral"]
    launch = plan_from_args(build_parser().parse_args(args + ["--host-cache-bytes", "512M"]), [])
    assert host_cache_bytes(launch.env) == 512 << 20
    assert option_value(launch.argv, "--max-cpu-loras") == str(HOST_COUNT_UNDER_BYTES)
    assert any("host cache bounded to 512.0 MiB" in note for note in launch.notes)
    both = plan_from_args(build_parser().parse_args(args + ["--host-cache-bytes", "1000000"]), ["--max-cpu-loras", "7"])
    assert both.env[ENV_HOST_CACHE_BYTES] == "1000000" and option_value(both.argv, "--max-cpu-loras") == "7"
    for bad in ("0", "lots"):
        with pytest.raises(ValueError, match="expected a (positive )?size"):
            plan_from_args(build_parser().parse_args(args + ["--host-cache-bytes", bad]), [])


def test_merge_plan_serves_a_cached_merge_without_lora(checkpoints, tiny_model, tmp_path):
    args = build_parser().parse_args(["--merge", str(checkpoints["haar"]), "--model", str(tiny_model),
                                      "--merge-cache", str(tmp_path)])
    launch = plan_from_args(args, [])
    out = merged_dir(checkpoints["haar"], tiny_model, tmp_path)
    assert launch.argv[:2] == ["--model", str(out)] and (out / "config.json").is_file()
    assert not has_option(launch.argv, "--enable-lora") and "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in launch.env
    assert launch.argv[launch.argv.index("--served-model-name") + 1] == "haar"
    assert any("cached" in n for n in plan_from_args(args, []).notes)
    with pytest.raises(ValueError, match="cannot enable LoRA"):
        plan_from_args(args, ["--enable-lora"])


def test_guard_options_are_checked_before_vllm_starts(checkpoints, tiny_model, tmp_path):
    shutil.copytree(checkpoints["haar"], tmp_path / "haar")
    launch = plan_store(str(tiny_model), [str(tmp_path)], cpu=True)
    with pytest.raises(ValueError, match="--max-body-bytes 100: expected at least 1024"):
        plan_guard(launch, max_body_bytes=100, environ={})
    assert plan_guard(launch, max_body_bytes=4096, environ={}).env["SELORA_MAX_BODY_BYTES"] == "4096"


def test_demo_listens_on_loopback_unless_host_given(tmp_path):
    parse = build_parser().parse_known_args
    args, rest = parse(["--demo", "--demo-model", "tiny", "--demo-dir", str(tmp_path)])
    argv = plan_from_args(args, rest).argv
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    args, rest = parse(["--demo", "--demo-model", "tiny", "--demo-dir", str(tmp_path), "--host", "0.0.0.0"])
    argv = plan_from_args(args, rest).argv
    assert argv.count("--host") == 1 and argv[argv.index("--host") + 1] == "0.0.0.0"
