"""From `selora-serve` options to the argv and environment of vLLM's OpenAI server.

    launch = plan_store(model, [store_dir], passthrough=["--max-model-len", "512"])
    launch.argv  # ["--model", model, "--enable-lora", "--max-lora-rank", "8", ...]
    launch.env   # {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1", "SELORA_ADAPTER_DIRS": ..., ...}

Store roots are directories or s3://BUCKET/PREFIX URLs (`store.s3`), each bucket asked
once here and its adapters cached under --adapter-cache-dir (SELORA_ADAPTER_CACHE_DIR).

A default is added only when the user did not pass that vLLM option; anything the user passes
reaches vLLM unchanged. Store mode enables LoRA with runtime updating (vLLM 0.32 consults LoRA
resolvers only then), derives the rank limit and slot counts from the store, and on CPU runs
float32 (vLLM's CPU backend has no bf16 kernels on many hosts) with a 2 GiB KV cache
(`--kv-cache-memory-bytes`, unless the user passes it or `--gpu-memory-utilization`: on CPU the
latter is a fraction of one NUMA node's memory less the model, so any fraction fails on some
host: vLLM's 0.92 whenever anything else uses memory, 0.1 on a 9 GiB node with a 0.5 GiB
model). Merge mode merges one checkpoint into the base weights once (cached by content) and
serves that with LoRA off.

Both modes refuse up front a model the engine would start with and then fail to run
(`preflight`: e.g. an attention head size vLLM's CPU backend lacks).

`plan_guard` adds the request guard to either (vllm_ext/guard.py: body size limit, and with
--tenants per-tenant API keys and adapters); the tenants file is validated here, before vLLM
starts. At most --max-loras - 1 adapters may be pinned (vLLM's worker fails once every slot is).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..vllm_ext.admin import ENV_PINNED, PLUGIN_NAME as ADMIN_PLUGIN
from ..vllm_ext.guard import ENV_MAX_BODY, ENV_TENANTS, PLUGIN_NAME as GUARD_PLUGIN
from ..vllm_ext.host_cache import ENV_HOST_CACHE_BYTES, ENV_HOST_CACHE_FORM
from ..store.cache import AdapterCache, parse_size
from ..store.catalog import DEFAULT_CACHE_BYTES, ENV_CACHE_BYTES, ENV_CACHE_DIR, ENV_DIRS, ENV_MAX_RANK, AdapterStore
from ..store.catalog import cache_dir as store_cache_dir
from ..store.s3 import is_remote
from .preflight import check_model

# vLLM 0.32's accepted --max-lora-rank values (vllm.config.lora.MaxLoRARanks).
SUPPORTED_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
MAX_SLOTS = 4
MAX_HOST_CACHE = 32
# --max-cpu-loras when the host cache is bounded in bytes instead (vLLM allocates nothing per count)
HOST_COUNT_UNDER_BYTES = 100_000


@dataclass
class Launch:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what was chosen for the user, for the log


def supported_rank(r: int) -> int:
    """The smallest rank limit vLLM accepts that is >= r."""
    for rank in SUPPORTED_RANKS:
        if rank >= r:
            return rank
    raise ValueError(f"rank {r} exceeds vLLM's largest supported --max-lora-rank {SUPPORTED_RANKS[-1]}")


def has_option(argv: Sequence[str], *names: str) -> bool:
    """True if any of `names` (e.g. "--max-loras") is in `argv`, as "--x v" or "--x=v"."""
    for arg in argv:
        flag = arg.split("=", 1)[0]
        if flag in names or flag.replace("_", "-") in names:
            return True
    return False


def option_value(argv: Sequence[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        flag, _, value = arg.partition("=")
        if flag.replace("_", "-") == name:
            return value if value else (argv[i + 1] if i + 1 < len(argv) else None)
    return None


def plugins_allowlist(environ=os.environ) -> str:
    """VLLM_PLUGINS naming our admin endpoint plugin (endpoint plugins load only when named).

    Naming any plugin turns VLLM_PLUGINS into an allowlist for every group, so every general
    plugin installed (ours included) is named too, and a user's own list is extended, not replaced.
    """
    from importlib.metadata import entry_points

    if environ.get("VLLM_PLUGINS") is not None:
        names = [n for n in environ["VLLM_PLUGINS"].split(",") if n]
    else:
        names = [ep.name for ep in entry_points(group="vllm.general_plugins")]
    for name in ("selora", ADMIN_PLUGIN, GUARD_PLUGIN):
        if name not in names:
            names.append(name)
    return ",".join(names)


# Defaults on a host without CUDA (see the module docstring), in both modes.
CPU_DEFAULTS: tuple[tuple[str, str | None], ...] = (("--dtype", "float32"), ("--kv-cache-memory-bytes", "2G"))
# A default is also left out when the user passed an option that replaces it.
_REPLACES = {"--kv-cache-memory-bytes": ("--gpu-memory-utilization",)}


def on_cpu() -> bool:
    import torch

    return not torch.cuda.is_available()


def _defaults(argv: list[str], defaults: list[tuple[str, str | None]], notes: list[str]) -> list[str]:
    out = []
    for flag, value in defaults:
        if any(has_option(argv, f) for f in (flag, *_REPLACES.get(flag, ()))):
            continue
        out += [flag] if value is None else [flag, value]
        notes.append(f"{flag} {value}" if value is not None else flag)
    return out


def plan_store(
    model: str, adapter_dirs: Sequence[str], passthrough: Sequence[str] = (), *,
    pinned: Sequence[str] = (), cpu: bool | None = None, host_cache_form: str | None = None,
    cache_dir: str | Path | None = None, cache_bytes: str | int | None = None,
    host_cache_bytes: str | int | None = None,
) -> Launch:
    """Serve `model` with LoRA enabled and the adapter store `adapter_dirs` (directories and
    s3://BUCKET/PREFIX URLs) behind the resolver. Each bucket is asked once: a misconfigured one
    (no such bucket, access denied) is a ValueError, so the server does not start; one that
    cannot be reached now only adds a warning (the server starts, serving local adapters and those
    in the cache). Remote adapters are cached under `cache_dir`, at most `cache_bytes`.
    `host_cache_bytes` bounds vLLM's host cache of adapters in bytes (`host_cache`); without an
    explicit --max-cpu-loras, the count bound is then lifted to HOST_COUNT_UNDER_BYTES."""
    host_budget = None
    if host_cache_bytes is not None:
        host_budget = parse_size(host_cache_bytes)
        if host_budget < 1:
            raise ValueError(f"--host-cache-bytes {host_cache_bytes}: expected a positive size such as 2G or 512M")
    remote = [d for d in adapter_dirs if is_remote(d)]
    cache = None
    cache_env: dict[str, str] = {}
    if remote:
        directory = Path(cache_dir).expanduser().resolve() if cache_dir else store_cache_dir()
        size = parse_size(cache_bytes) if cache_bytes is not None else DEFAULT_CACHE_BYTES
        cache = AdapterCache(directory, size)
        cache_env = {ENV_CACHE_DIR: str(directory), ENV_CACHE_BYTES: str(size)}
    elif cache_dir or cache_bytes is not None:
        raise ValueError("--adapter-cache-dir and --adapter-cache-bytes apply to adapters in object storage "
                         "(--adapters s3://BUCKET/PREFIX); every --adapters here is a local directory")
    store = AdapterStore(adapter_dirs, cache)
    unreachable = store.check_remote()
    argv = list(passthrough)
    cpu = on_cpu() if cpu is None else cpu
    n = len(store.names())
    notes: list[str] = []
    for url, reason in unreachable.items():
        n = max(n, MAX_HOST_CACHE)  # its adapters are unknown: full-size defaults
        notes.append(f"warning: {url} cannot be reached now ({reason}); serving local and cached adapters, the "
                     "others answer 503 until it is back" + ("" if has_option(argv, "--max-lora-rank") else
                                                              "; pass --max-lora-rank, as its ranks are unknown"))
    rank_limit = option_value(argv, "--max-lora-rank")
    rank = int(rank_limit) if rank_limit else supported_rank(store.max_rank())
    slots = max(1, min(n, MAX_SLOTS), len(pinned) + 1)  # one slot always stays unpinned
    if has_option(argv, "--max-loras") and len(pinned) > int(option_value(argv, "--max-loras") or 1) - 1:
        raise ValueError(
            f"--pin names {len(pinned)} adapter(s) but --max-loras {option_value(argv, '--max-loras')} allows at "
            "most --max-loras - 1 pins (one LoRA slot must stay free for the other adapters)"
        )
    host = max(slots, min(n, MAX_HOST_CACHE) if host_budget is None else HOST_COUNT_UNDER_BYTES)
    if has_option(argv, "--max-loras") and not has_option(argv, "--max-cpu-loras"):
        host = max(host, int(option_value(argv, "--max-loras") or 1))
    defaults: list[tuple[str, str | None]] = [
        ("--enable-lora", None), ("--max-lora-rank", str(rank)),
        ("--max-loras", str(slots)), ("--max-cpu-loras", str(host)),
    ]
    if cpu:
        defaults += CPU_DEFAULTS
    env = {
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1",
        ENV_DIRS: store.to_env(),
        ENV_MAX_RANK: str(rank),
        "VLLM_PLUGINS": plugins_allowlist(),
        **cache_env,
    }
    if remote:
        notes.append(f"adapters from {', '.join(remote)} cached in {cache_env[ENV_CACHE_DIR]} "
                     f"(at most {int(cache_env[ENV_CACHE_BYTES]) / 2**30:.1f} GiB)")
    if pinned:
        env[ENV_PINNED] = ",".join(pinned)
    if host_cache_form:
        env[ENV_HOST_CACHE_FORM] = host_cache_form
        notes.append(f"host cache holds SeLoRA adapters in {host_cache_form} form")
    if host_budget is not None:
        env[ENV_HOST_CACHE_BYTES] = str(host_budget)
        notes.append(f"host cache bounded to {host_budget / 2**20:.1f} MiB of adapter weights, least recently used "
                     "evicted first" + ("" if host_cache_form == "spectral" else
                                        " (dense form: --host-cache-form spectral holds far more per byte)"))
    full = ["--model", model] + _defaults(argv, defaults, notes) + argv
    check_model(model, option_value(full, "--dtype"), cpu)
    return Launch(full, env, notes)


def plan_guard(launch: Launch, tenants: str | None = None, max_body_bytes: int | None = None,
               environ=os.environ) -> Launch:
    """Add the request guard to `launch`; `tenants` (a TOML file) is validated now."""
    return with_guard(launch, guard_settings(launch.argv, tenants, max_body_bytes, environ))


def with_guard(launch: Launch, settings: tuple[dict[str, str], list[str]]) -> Launch:
    """`launch` with `guard_settings`' environment and notes added."""
    env, notes = settings
    launch.env.update(env)
    launch.notes.extend(notes)
    return launch


def guard_settings(argv: list[str], tenants: str | None = None, max_body_bytes: int | None = None,
                   environ=os.environ) -> tuple[dict[str, str], list[str]]:
    """The guard's environment and start-up notes for vLLM options `argv`; raises on bad options.

    Cheap and vLLM-free, so the CLI runs it before anything that imports vLLM: a bad tenants file
    is one line on stderr, not one line after vLLM's import-time log.
    """
    from ..tenants import load_tenants

    env: dict[str, str] = {}
    notes: list[str] = []
    if tenants:
        if has_option(argv, "--api-key") or environ.get("VLLM_API_KEY"):
            raise ValueError("--tenants replaces vLLM's --api-key (and VLLM_API_KEY): pass only one; the tenants "
                             "file's [admin] key_sha256 is the operator's key")
        loaded = load_tenants(tenants)
        env[ENV_TENANTS] = str(Path(tenants).resolve())
        notes.append(f"--tenants {tenants}: {len(loaded.tenants)} tenant(s), "
                     f"admin key {'set' if loaded.admin else 'not set (admin routes refused)'}")
    if max_body_bytes is not None:
        if max_body_bytes < 1024:
            raise ValueError(f"--max-body-bytes {max_body_bytes}: expected at least 1024")
        env[ENV_MAX_BODY] = str(max_body_bytes)
    env["VLLM_PLUGINS"] = plugins_allowlist(environ)
    return env, notes


def merged_dir(ckpt: str | Path, model: str | Path, cache: str | Path) -> Path:
    """Where the merge of `ckpt` into `model` is cached: keyed by both inputs' bytes and paths."""
    digest = hashlib.sha256()
    for root in (Path(ckpt), Path(model)):
        digest.update(str(root.resolve()).encode())
        for item in sorted(root.iterdir()):
            if item.is_file():
                stat = item.stat()
                digest.update(f"{item.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return Path(cache) / f"{Path(ckpt).name}-{digest.hexdigest()[:16]}"


def plan_merge(
    ckpt: str, model: str, passthrough: Sequence[str] = (), *, cache: str | Path, cpu: bool | None = None,
) -> Launch:
    """Merge `ckpt` into `model` (once; cached under `cache`) and serve it with LoRA off."""
    from ..convert import merge

    if has_option(passthrough, "--enable-lora", "--lora-modules"):
        raise ValueError("--merge serves one adapter merged into the base weights; it cannot enable LoRA")
    cpu = on_cpu() if cpu is None else cpu
    check_model(model, option_value(passthrough, "--dtype") or ("float32" if cpu else None), cpu)
    out = merged_dir(ckpt, model, cache)
    notes = []
    if not out.is_dir():
        merge(ckpt, model, out)
        notes.append(f"merged {ckpt} into {model} at {out}")
    else:
        notes.append(f"using the cached merge at {out}")
    argv = list(passthrough)
    defaults: list[tuple[str, str | None]] = [("--served-model-name", Path(ckpt).resolve().name)]
    if cpu:
        defaults += CPU_DEFAULTS
    return Launch(["--model", str(out)] + _defaults(argv, defaults, notes) + argv, {}, notes)


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "selora-serve"
