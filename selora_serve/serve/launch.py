"""Start an OpenAI-compatible server (selora-serve or plain vLLM) as a child process, and stop it.

    server = start(selora_serve_command(["--demo"]), Path("serve.log"))
    server.client().models.list()
    stop(server)

For tests and benchmarks on one machine: the server listens on 127.0.0.1 on a free port, writes
stdout and stderr to `log`, runs in its own session (so `stop` signals the API server, the engine
core and any workers together) and `start` returns only once `GET /health` answers 200. If the
process exits or stays unhealthy past `timeout`, `start` stops it and raises RuntimeError with the
tail of its log. Nothing here parses vLLM options: callers pass complete argv lists.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

STARTUP_TIMEOUT_S = 300
HOST = "127.0.0.1"
# What every CPU run here needs: an explicit KV cache size (vLLM's CPU backend would take a share
# of one NUMA node's memory, which is negative on a small node once the model is loaded),
# has no CUDA graphs to capture, and a short context keeps the KV cache (and start-up) small.
CPU_OPTIONS = ("--kv-cache-memory-bytes", "512M", "--max-model-len", "256", "--enforce-eager", "--seed", "0")


@dataclass
class ServerProcess:
    url: str
    process: subprocess.Popen
    log: Path

    def client(self, **kwargs):
        """A synchronous OpenAI client for this server (no retries: a failure is a result)."""
        from openai import OpenAI

        kwargs = {"max_retries": 0, "timeout": 120, "api_key": "unused", **kwargs}
        return OpenAI(base_url=f"{self.url}/v1", **kwargs)

    def async_client(self, **kwargs):
        from openai import AsyncOpenAI

        kwargs = {"max_retries": 0, "timeout": 120, "api_key": "unused", **kwargs}
        return AsyncOpenAI(base_url=f"{self.url}/v1", **kwargs)

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


def selora_serve_command(args: Sequence[str]) -> list[str]:
    """argv running `selora-serve ARGS` with this interpreter (no reliance on console scripts)."""
    return [sys.executable, "-m", "selora_serve.serve.cli", *args]


def vllm_command(args: Sequence[str]) -> list[str]:
    """argv running plain vLLM's OpenAI server (vLLM 0.32's `vllm` console script is not used)."""
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_healthy(server: ServerProcess, timeout: float = STARTUP_TIMEOUT_S, name: str = "server") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{name} exited with {server.process.returncode}:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(f"{server.url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise RuntimeError(f"{name} not healthy after {timeout}s:\n{server.log_tail()}")


def start(
    command: Sequence[str], log: str | Path, *, env: Mapping[str, str] | None = None,
    timeout: float = STARTUP_TIMEOUT_S, name: str = "server",
) -> ServerProcess:
    """Run `command` + `--host 127.0.0.1 --port FREE` and wait until it is healthy.

    `env` entries are added to this process's environment (None: inherit it unchanged).
    """
    port = free_port()
    cmd = [*command, "--host", HOST, "--port", str(port)]
    full_env = None if env is None else {**os.environ, **env}
    log = Path(log)
    with open(log, "wb") as fh:  # the child keeps its own descriptor
        process = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=full_env, start_new_session=True)
    server = ServerProcess(f"http://{HOST}:{port}", process, log)
    try:
        wait_healthy(server, timeout, name)
    except BaseException:
        stop(server)
        raise
    return server


def stop(server: ServerProcess, grace: float = 30) -> None:
    """SIGTERM the server's whole process group; SIGKILL it if still running after `grace` s."""
    if server.process.poll() is None:
        os.killpg(server.process.pid, signal.SIGTERM)
        try:
            server.process.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait(10)


__all__ = [
    "CPU_OPTIONS", "STARTUP_TIMEOUT_S", "ServerProcess", "free_port", "selora_serve_command", "start", "stop",
    "vllm_command", "wait_healthy",
]
