"""A local S3-protocol server for tests, benchmarks and trying `--adapters s3://` on one machine.

    with S3Server() as s3:                       # moto's server mode, in a child process, on loopback
        s3.create_bucket("adapters")
        s3.upload_dir("adapters", "prod/support-bot", Path("./store/support-bot"))
        env = s3.env()                           # AWS_ENDPOINT_URL, credentials, region for a client
        with FaultProxy(s3.port) as proxy:       # the same server behind a switchable TCP proxy
            proxy.mode = "refuse"                # "pass" | "refuse" (connections reset) | "stall"

The server is moto (`moto[server]`, `python -m moto.server`): a real HTTP S3 endpoint, not a mock
of a client library; no MinIO or other S3 server can be installed from PyPI or Debian here.
Buckets are created and objects written with obstore, the client selora-serve reads them with.
`FaultProxy` forwards TCP connections to the server unless told to refuse them (the store is
down) or to stall them (accept, read the request, answer nothing), for the fault tests.
Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

HOST = "127.0.0.1"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "selora-test", "AWS_SECRET_ACCESS_KEY": "selora-test-secret",
               "AWS_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def endpoint_env(url: str) -> dict[str, str]:
    """The AWS environment of a client (selora-serve) talking to the S3 endpoint at `url`."""
    return {**CREDENTIALS, "AWS_ENDPOINT_URL": url}


class S3Server:
    """moto's S3 server in a child process on 127.0.0.1 (a free port unless given)."""

    def __init__(self, port: int | None = None, log: Path | None = None, *, prefix: list[str] | None = None):
        self.port = port or _free_port()
        self.url = f"http://{HOST}:{self.port}"
        self._log = log
        self._prefix = prefix or []  # e.g. ["ip", "netns", "exec", NAME] to run it elsewhere
        self.process: subprocess.Popen | None = None
        self.host = HOST

    def start(self, host: str = HOST, timeout: float = 60) -> "S3Server":
        self.host = host
        self.url = f"http://{host}:{self.port}"
        out = open(self._log, "wb") if self._log else subprocess.DEVNULL
        self.process = subprocess.Popen(
            [*self._prefix, sys.executable, "-m", "moto.server", "-H", host, "-p", str(self.port)],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **CREDENTIALS}, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.process.returncode}")
            try:
                with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=2):
                    return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"moto server not up on {self.url} after {timeout} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def __enter__(self) -> "S3Server":
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()

    def env(self) -> dict[str, str]:
        return endpoint_env(self.url)

    # --- writing the bucket (through obstore, as selora-serve reads it) -----------------------

    def store(self, bucket: str):
        from obstore.store import S3Store

        return S3Store(bucket, config={"endpoint": self.url, "access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
                                       "secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                                       "region": CREDENTIALS["AWS_REGION"]},
                       client_options={"allow_http": True})

    def create_bucket(self, bucket: str) -> None:
        """Create `bucket` with a plain S3 CreateBucket request (obstore cannot create buckets)."""
        request = urllib.request.Request(f"{self.url}/{bucket}", method="PUT")
        with urllib.request.urlopen(request, timeout=30) as resp:
            if resp.status != 200:
                raise RuntimeError(f"CreateBucket {bucket}: HTTP {resp.status}")

    def put(self, bucket: str, key: str, data: bytes) -> None:
        import obstore

        obstore.put(self.store(bucket), key, data)

    def delete(self, bucket: str, key: str) -> None:
        import obstore

        obstore.delete(self.store(bucket), key)

    def upload_dir(self, bucket: str, prefix: str, directory: Path) -> int:
        """Every regular file of `directory` to `prefix`/NAME, the config file last (see
        `remote`: the file that makes a prefix an adapter is published last). Returns bytes."""
        files = sorted((f for f in Path(directory).iterdir() if f.is_file()),
                       key=lambda f: f.name in ("selora_config.json", "adapter_config.json"))
        total = 0
        for f in files:
            data = f.read_bytes()
            self.put(bucket, f"{prefix.strip('/')}/{f.name}", data)
            total += len(data)
        return total


class FaultProxy:
    """A TCP proxy on 127.0.0.1 in front of `port`, whose `mode` can be switched at run time:
    "pass" forwards, "refuse" resets every new connection and drops open ones, "stall" accepts
    and reads but never answers (a store that hangs). `sent` counts the bytes it forwarded from the
    server to its clients (what a bucket's egress bill counts)."""

    def __init__(self, target_port: int, target_host: str = HOST):
        self.target = (target_host, target_port)
        self.mode = "pass"
        self._sock = socket.create_server((HOST, 0))
        self.port = self._sock.getsockname()[1]
        self.url = f"http://{HOST}:{self.port}"
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self.sent = 0

    def __enter__(self) -> "FaultProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        self.drop()

    def drop(self) -> None:
        """Close every connection in flight (as a store going down does)."""
        with self._lock:
            for s in list(self._open):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self._open.clear()

    def set_mode(self, mode: str) -> None:
        """"refuse" also drops the connections in flight; "stall" pauses them (they resume on
        "pass")."""
        if mode not in ("pass", "refuse", "stall"):
            raise ValueError(f"mode {mode!r}: expected pass, refuse or stall")
        self.mode = mode
        if mode == "refuse":
            self.drop()

    def _track(self, *socks: socket.socket) -> None:
        with self._lock:
            self._open.update(socks)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            if self.mode == "refuse":
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                client.close()  # RST
                continue
            self._track(client)
            if self.mode == "stall":
                threading.Thread(target=self._swallow, args=(client,), daemon=True).start()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            self._track(upstream)
            for a, b, count in ((client, upstream, False), (upstream, client, True)):
                threading.Thread(target=self._pipe, args=(a, b, count), daemon=True).start()

    def _swallow(self, sock: socket.socket) -> None:
        try:
            while sock.recv(1 << 16):
                pass
        except OSError:
            pass

    def _pipe(self, src: socket.socket, dst: socket.socket, count: bool = False) -> None:
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                while self.mode == "stall" and not self._stop.is_set():
                    time.sleep(0.05)
                dst.sendall(data)
                if count:
                    with self._lock:
                        self.sent += len(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


__all__ = ["CREDENTIALS", "FaultProxy", "S3Server", "endpoint_env"]
