"""A Ray cluster on this host that listens and connects on 127.0.0.1 only (tests, benchmarks, trying it).

    with loopback_cluster(num_cpus=8, http_port=8000) as url:   # "http://127.0.0.1:8000"
        serve.run(build_app({...}), name="selora", route_prefix="/")

Ray hands out the host's address unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 is set before it starts
(with `_node_ip_address`), and vLLM picks the host's address for its internal queue unless
VLLM_HOST_IP says otherwise; both are set here for this process and everything it starts. The
dashboard is off. What Ray 2.60 still binds to every interface: each Serve replica's
inter-deployment gRPC server listens on [::]:0 (hard-coded in `ray/serve/_private/replica.py`; in a
real cluster it must be reachable from other nodes): listeners only, no traffic leaves loopback.
`num_cpus` is declared, not detected: a model replica reserves `cpus_per_replica` logical CPUs and
the ingress one more, so a 2-core host must declare more than it has.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

LOOPBACK = "127.0.0.1"
ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "VLLM_HOST_IP": LOOPBACK}
# Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, when it is first imported: import this module first.
os.environ.update(ENV)


@contextlib.contextmanager
def loopback_cluster(num_cpus: int = 8, http_port: int = 8000) -> Iterator[str]:
    import ray
    from ray import serve

    from ray._private import ray_constants

    if ray_constants.ENABLE_RAY_CLUSTER:
        raise RuntimeError("Ray was imported before selora_serve.ray.loopback set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: "
                           "it would hand out the host's address; import selora_serve.ray.loopback (or set the "
                           "variable) before anything imports ray")
    os.environ.update(ENV)
    ray.init(num_cpus=num_cpus, _node_ip_address=LOOPBACK, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": LOOPBACK, "port": http_port})
        yield f"http://{LOOPBACK}:{http_port}"
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()
