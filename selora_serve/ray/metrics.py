"""The selora_* metrics of each model replica, in Ray's metrics export, labelled by replica.

Under `selora-serve` these metrics are on vLLM's `/metrics` (`vllm_ext.metrics`). In a Ray replica
vLLM's API server does not run: its engine's worker processes (decodes, loads, evictions,
residency) and the replica itself (requests per adapter, fetches from buckets) take them as
prometheus-client objects that nothing would serve. So each replica

- gives its engine a PROMETHEUS_MULTIPROC_DIR of its own before the engine starts (the worker
  processes inherit it and write their values there; removed when the replica stops), and
- every `INTERVAL_S` seconds copies every `selora_*` sample (the workers' files and the replica's
  own registry; histogram buckets left out, their _count and _sum kept) into Ray gauges of the same
  name with a `replica` tag (`ray.util.metrics`), which Ray's metrics agent on each node exports
  as `ray_selora_...{replica="..."}` beside Ray Serve's own per-replica metrics.

Counters are copied as gauges holding the counter's value: rate() works on them as on counters.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile

from ..vllm_ext.metrics import ENV_MULTIPROC

logger = logging.getLogger("ray.serve.selora")

INTERVAL_S = 5.0


class ReplicaMetrics:
    """See the module docstring. Construct before the replica's engine starts."""

    def __init__(self, replica: str):
        self.replica = replica
        self.own_dir: str | None = None
        if not os.environ.get(ENV_MULTIPROC):
            self.own_dir = tempfile.mkdtemp(prefix=f"selora-ray-metrics-{os.getpid()}-")
            os.environ[ENV_MULTIPROC] = self.own_dir
        self._gauges: dict = {}
        self._task: asyncio.Task | None = None

    def samples(self) -> list[tuple[str, dict, float]]:
        """(name, labels, value) of every selora_* sample of this replica and its engine's processes."""
        from prometheus_client import REGISTRY, CollectorRegistry, multiprocess

        workers = CollectorRegistry()
        multiprocess.MultiProcessCollector(workers, path=os.environ[ENV_MULTIPROC])
        out = []
        for registry in (workers, REGISTRY):
            for family in registry.collect():
                if not family.name.startswith("selora_"):
                    continue
                out += [(s.name, dict(s.labels), s.value) for s in family.samples
                        if not s.name.endswith(("_bucket", "_created"))]
        return out

    def export(self) -> int:
        """Copy the samples into Ray's gauges now; returns how many."""
        from ray.util.metrics import Gauge

        samples = self.samples()
        for name, labels, value in samples:
            keys = (*sorted(labels), "replica")
            gauge = self._gauges.get((name, keys))
            if gauge is None:
                gauge = self._gauges[(name, keys)] = Gauge(name, description=f"selora-serve {name}, per replica",
                                                           tag_keys=keys)
            gauge.set(value, tags={**labels, "replica": self.replica})
        return len(samples)

    def start(self) -> None:
        async def loop():
            while True:
                try:
                    await asyncio.to_thread(self.export)
                except Exception:  # noqa: BLE001 - metrics must never stop a replica
                    logger.exception("selora-serve: exporting replica metrics failed")
                await asyncio.sleep(INTERVAL_S)

        self._task = asyncio.get_running_loop().create_task(loop())

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self.own_dir is not None:
            shutil.rmtree(self.own_dir, ignore_errors=True)
