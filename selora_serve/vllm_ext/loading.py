"""Worker side: vLLM loads a SeLoRA checkpoint directory wherever it loads a LoRA directory.

vLLM 0.32 loads an adapter in `WorkerLoRAManager._load_adapter`, which makes two calls that read
files: `PEFTHelper.from_local_dir(path)` (adapter_config.json) and
`self._lora_model_cls.from_local_checkpoint(path, ...)` (adapter_model.*). We divert exactly those
two, and only for directories holding selora_config.json; everything else, dense PEFT LoRAs
included, takes vLLM's own path unchanged.

- `PEFTHelper.from_local_dir` is wrapped: for a SeLoRA directory the PEFTHelper is built from the
  manifest (the same adapter_config dict `selora-convert to-peft` writes), so vLLM's own
  `validate_legal` (rank limit, unsupported features) still runs.
- `WorkerLoRAManager.__init__` is wrapped to pass, through vLLM's own `lora_model_cls` parameter,
  a subclass of the LoRAModel class it would have used, bound to the served model's HF config.
  Its `from_local_checkpoint` validates the checkpoint against that config (fingerprint and
  shapes: a mismatched adapter must never reach the slot copy), decodes A and B in memory
  (nothing is written to disk) and hands the tensors to vLLM's `from_lora_tensors`. This runs
  inside the engine loop, so it does only what the API process has not: a snapshot the resolver
  marked verified for this base (`store.is_verified`), whose hard-linked files are unchanged since
  (`store.snapshot.intact`, checked after reading them), skips the value-level checks (NaN/Inf,
  Omega checksums); any other directory is verified in full here.

vLLM's LRU caches then own the LoRAModel; when it is evicted and requested again, `_load_adapter`
runs again and the coefficients are decoded again. With SELORA_HOST_CACHE_FORM=spectral the
LoRAModel waits in the host cache as coefficients and is decoded on each activation
(`host_cache`).
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path
from dataclasses import dataclass, field

from ..adapter import SpectralAdapter
from ..checkpoint import COEF_FILE, is_selora_checkpoint, load_packed, read_manifest
from ..packed import PackedAdapter
from ..peft_io import dense_state_dict, peft_config_dict
from ..base_model import BaseFacts
from ..store.snapshot import intact, is_verified
from ..store.verify import SEDORA_REFUSAL
from ..spectral import fused
from . import host_cache, metrics

# A child of vLLM's logger, so it reaches the handlers vLLM configures in every process.
logger = logging.getLogger("vllm.selora_serve")

_MARK = "_selora_patched"


@dataclass
class DecodeStats:
    """Decodes done in this process (the engine's worker process when serving)."""

    count: int = 0
    seconds: list[float] = field(default_factory=list)


STATS = DecodeStats()


def peft_config_for(path: str) -> dict:
    """The PEFT adapter_config dict of the SeLoRA checkpoint at `path` (manifest only)."""
    manifest = read_manifest(path)
    if manifest.config.variant == "sedora":
        raise ValueError(f"{path}: {SEDORA_REFUSAL}")
    return peft_config_dict(SpectralAdapter(manifest.config, manifest.base))


def load_verified(path: str, base_config, expected_lora_modules: set[str]) -> tuple[PackedAdapter, bool]:
    """The checkpoint at `path` as stored (quantised coefficients stay quantised), validated
    against `base_config` (a config or its BaseFacts), and whether it was a snapshot already
    verified for that base (value checks skipped)."""
    facts = BaseFacts.of(base_config)
    verified = is_verified(path, facts.fingerprint)
    manifest = read_manifest(path)
    coefficients = (Path(path) / COEF_FILE).read_bytes()
    if verified and not intact(path):  # a linked file rewritten in place since it was verified
        logger.warning("%s: a file changed since this snapshot was verified; validating it in full", path)
        verified = False
    adapter = load_packed(path, base_config=facts, verify=not verified, manifest=manifest, coefficients=coefficients)
    unexpected = sorted(n for n in adapter.modules if n.rsplit(".", 1)[-1] not in expected_lora_modules)
    if unexpected:
        raise ValueError(
            f"{path}: vLLM cannot apply LoRA to {len(unexpected)} module(s) of this adapter, e.g. "
            f"{unexpected[0]}; it supports {sorted(expected_lora_modules)}"
        )
    return adapter, verified


def decode(adapter: PackedAdapter, path: str, note: str, started: float | None = None) -> dict:
    """The PEFT-named dense tensors of `adapter` (float32; vLLM casts them to the LoRA dtype),
    timed from `started` (default: now), counted and logged as one decode of `path`."""
    start = time.perf_counter() if started is None else started
    tensors = dense_state_dict(adapter)
    elapsed = time.perf_counter() - start
    STATS.count += 1
    STATS.seconds.append(elapsed)
    metrics.observe_decode(elapsed)
    logger.info("decoded SeLoRA adapter %s (%d modules%s) in %.1f ms", path, len(adapter.modules), note,
                1e3 * elapsed)
    return tensors


WARM_BASES = (("wavelet", "haar"), ("wavelet", "db4"), ("fourier", None))


def default_layouts(facts: BaseFacts, lora_config) -> list:
    """The matrix layouts of adapters made with the defaults (seed, eta, the default target
    modules) at the engine's rank limit, for each common basis: their tables are built at engine
    start. Adapters with another seed, eta or rank build theirs on first decode (a few ms)."""
    from ..config import DEFAULT_TARGETS, SeLoRAConfig
    from ..spectral.basis import Basis
    from ..spectral.materialise import layout_for

    rank = getattr(lora_config, "max_lora_rank", None) if lora_config is not None else None
    defaults = SeLoRAConfig()
    try:
        shapes = set(facts.target_shapes(DEFAULT_TARGETS).values())
    except ValueError:  # a model without those modules: nothing to prepare
        return []
    if not rank:
        return []
    return [layout_for(Basis(name, wavelet), defaults.seed, defaults.eta, shape)
            for name, wavelet in WARM_BASES for d_in, d_out in shapes for shape in ((rank, d_in), (d_out, rank))]


def selora_model_class(base_cls: type, base_config, form: str = "dense") -> type:
    """A subclass of vLLM's LoRAModel class `base_cls` that also loads SeLoRA directories; with
    `form` "spectral" each SeLoRA LoRAModel carries the `host_cache.SpectralSource` it is rebuilt
    from on activation."""
    from vllm.lora.utils import get_lora_id

    class SeLoRAModel(base_cls):
        @classmethod
        def from_local_checkpoint(cls, lora_dir, expected_lora_modules, peft_helper, **kwargs):
            if not is_selora_checkpoint(lora_dir):
                lora = super().from_local_checkpoint(lora_dir, expected_lora_modules, peft_helper, **kwargs)
                metrics.count_load("peft")
                return lora
            start = time.perf_counter()
            adapter, verified = load_verified(lora_dir, base_config, set(expected_lora_modules))
            model_id = kwargs.get("lora_model_id")
            model_id = get_lora_id() if model_id is None else model_id

            def build(tensors):
                return cls.from_lora_tensors(
                    lora_model_id=model_id,
                    tensors=tensors,
                    peft_helper=peft_helper,
                    device=kwargs.get("device", "cuda"),
                    dtype=kwargs.get("dtype"),
                    model_vocab_size=kwargs.get("model_vocab_size"),
                    weights_mapper=kwargs.get("weights_mapper"),
                    skip_prefixes=kwargs.get("skip_prefixes"),
                )

            lora = build(decode(adapter, lora_dir, ", verified snapshot" if verified else "", start))
            if form == "spectral":
                host_cache.attach(lora, host_cache.SpectralSource(
                    adapter, lambda: build(decode(adapter, lora_dir, ", host cache -> slot"))))
            metrics.count_load("selora")
            return lora

    SeLoRAModel.__qualname__ = SeLoRAModel.__name__ = f"SeLoRA{base_cls.__name__}"
    return SeLoRAModel


def install() -> None:
    """Patch vLLM's worker-side LoRA loading (idempotent)."""
    from vllm.lora.lora_model import LoRAModel
    from vllm.lora.peft_helper import PEFTHelper
    from vllm.lora.worker_manager import WorkerLoRAManager

    init = WorkerLoRAManager.__init__
    if not getattr(init, _MARK, False):

        @functools.wraps(init)
        def __init__(self, vllm_config, device, embedding_modules, lora_model_cls=LoRAModel):
            base_config = BaseFacts.of(vllm_config.model_config.hf_config)
            form = host_cache.host_cache_form()
            host_cache.host_cache_bytes()  # a bad value fails here, before vLLM builds anything
            metrics.worker_metrics()  # the adapter metrics of this worker exist from now on
            fused.warm_up()  # compile (or load) the decode kernels now, not on the first request
            fused.prepare(default_layouts(base_config, vllm_config.lora_config))
            init(self, vllm_config, device, embedding_modules, selora_model_class(lora_model_cls, base_config, form))
            if form == "spectral":
                self._manager_cls = host_cache.spectral_manager_class(self._manager_cls)
            budget = host_cache.host_cache_bytes()
            if budget is not None:
                self._manager_cls = host_cache.bounded_manager_class(self._manager_cls, budget)

        setattr(__init__, _MARK, True)
        WorkerLoRAManager.__init__ = __init__

    from_local_dir = PEFTHelper.__dict__["from_local_dir"].__func__
    if not getattr(from_local_dir, _MARK, False):

        @functools.wraps(from_local_dir)
        def selora_from_local_dir(cls, lora_path, max_position_embeddings):
            if not is_selora_checkpoint(lora_path):
                return from_local_dir(cls, lora_path, max_position_embeddings)
            config = peft_config_for(lora_path)
            config["vllm_max_position_embeddings"] = max_position_embeddings
            return cls.from_dict(config)

        setattr(selora_from_local_dir, _MARK, True)
        PEFTHelper.from_local_dir = classmethod(selora_from_local_dir)
