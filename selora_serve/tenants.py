"""Tenants: which API key may use which adapters. The file format, its validation, and matching.

`selora-serve --tenants FILE` reads a TOML file (stdlib `tomllib`; YAML is not accepted):

    [admin]                                 # optional: without it no key reaches the admin routes
    key_sha256 = "9f86d081884c7d65..."      # sha256 hex of the admin API key

    [[tenant]]
    name = "acme"                           # [A-Za-z0-9_.-]+, the label on the metrics
    key_sha256 = "60303ae22b998861..."      # sha256 hex of this tenant's API key
    adapters = ["acme-*", "shared-summariser"]   # names or fnmatch globs ("*" also matches "/")
    base_model = true                       # may use the base model itself (default true)

Keys are stored hashed: a `key` field (a plaintext key) is refused, as is any unknown field, a
malformed hash, a duplicate tenant name and a key hash used twice. Every error is a TenantsError
naming the file, the tenant and the field. Hash a key (read from stdin, so it stays out of the
shell history) or make a new one with:

    python -m selora_serve.tenants hash-key < key.txt
    python -m selora_serve.tenants new-key          # prints a random key and its hash

`authenticate` compares the hash of a presented key with every stored hash in constant time
(`hmac.compare_digest`, no early exit). The admin key is the operator's: it may use every adapter
and the base model. This module knows nothing of HTTP or vLLM; `vllm_ext/guard.py` enforces it.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import hmac
import re
import secrets
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

ADMIN = "admin"  # the admin's principal name (a tenant may not take it)
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_HASH = re.compile(r"[0-9a-f]{64}")
_TENANT_FIELDS = {"name", "key_sha256", "adapters", "base_model"}


class TenantsError(ValueError):
    """The tenants file is invalid; the message names the file, the tenant and the field."""

    def __init__(self, path: str | Path, where: str, reason: str):
        self.path, self.where, self.reason = str(path), where, reason
        super().__init__(f"{path}: {where}: {reason}")


@dataclass(frozen=True)
class Principal:
    """Who a request is from: a tenant, or the admin (`is_admin`)."""

    name: str
    key_sha256: str
    adapters: tuple[str, ...] = ()
    base_model: bool = True
    is_admin: bool = False

    def may_use(self, model: str | None, base_names: Sequence[str]) -> bool:
        """May this principal send requests to `model` (None: the default, i.e. the base model)?"""
        if self.is_admin:
            return True
        if model is None or model in base_names:
            return self.base_model
        return any(fnmatch.fnmatchcase(model, pattern) for pattern in self.adapters)


@dataclass(frozen=True)
class Tenants:
    path: str
    tenants: tuple[Principal, ...]
    admin: Principal | None = None

    def authenticate(self, key: str | None) -> Principal | None:
        """The principal whose key this is, or None. Every stored hash is compared (constant time)."""
        if not key:
            return None
        digest = hash_key(key)
        found = None
        for principal in (*self.tenants, *([self.admin] if self.admin else [])):
            if hmac.compare_digest(digest, principal.key_sha256):
                found = principal
        return found

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tenants)


def hash_key(key: str) -> str:
    """The sha256 hex digest of an API key (what the tenants file stores)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _key_hash(path: Path, where: str, entry: dict[str, Any]) -> str:
    if "key" in entry:
        raise TenantsError(path, f"{where}.key", "plaintext keys are refused; store key_sha256 = the sha256 "
                           "hex of the key (python -m selora_serve.tenants hash-key)")
    value = entry.get("key_sha256")
    if value is None:
        raise TenantsError(path, f"{where}.key_sha256", "missing")
    if not isinstance(value, str) or not _HASH.fullmatch(value):
        raise TenantsError(path, f"{where}.key_sha256", "expected 64 lowercase hex digits (a sha256 digest)")
    return value


def _tenant(path: Path, i: int, entry: Any) -> Principal:
    if not isinstance(entry, dict):
        raise TenantsError(path, f"tenant[{i}]", "expected a table ([[tenant]])")
    name = entry.get("name")
    where = f"tenant {name!r}" if isinstance(name, str) else f"tenant[{i}]"
    unknown = sorted(set(entry) - _TENANT_FIELDS - {"key"})
    if unknown:
        raise TenantsError(path, f"{where}.{unknown[0]}", f"unknown field; expected {sorted(_TENANT_FIELDS)}")
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name == ADMIN:
        raise TenantsError(path, f"{where}.name", f"expected 1-64 characters of [A-Za-z0-9_.-], not {ADMIN!r}")
    key = _key_hash(path, where, entry)
    adapters = entry.get("adapters", [])
    if not isinstance(adapters, list) or not all(isinstance(a, str) and a for a in adapters):
        raise TenantsError(path, f"{where}.adapters", "expected a list of adapter names or glob patterns")
    base_model = entry.get("base_model", True)
    if not isinstance(base_model, bool):
        raise TenantsError(path, f"{where}.base_model", f"expected true or false, got {base_model!r}")
    return Principal(name, key, tuple(adapters), base_model)


def parse_tenants(data: dict[str, Any], path: str | Path = "<tenants>") -> Tenants:
    """Validate a parsed tenants document; TenantsError names the file, tenant and field."""
    path = Path(path)
    unknown = sorted(set(data) - {"admin", "tenant"})
    if unknown:
        raise TenantsError(path, unknown[0], "unknown section; expected [admin] and [[tenant]]")
    admin = None
    if "admin" in data:
        section = data["admin"]
        if not isinstance(section, dict) or set(section) - {"key_sha256", "key"}:
            raise TenantsError(path, "admin", "expected a table with only key_sha256")
        admin = Principal(ADMIN, _key_hash(path, "admin", section), is_admin=True)
    entries = data.get("tenant", [])
    if not isinstance(entries, list) or not entries:
        raise TenantsError(path, "tenant", "expected at least one [[tenant]] table")
    tenants = tuple(_tenant(path, i, e) for i, e in enumerate(entries))
    seen_names: set[str] = set()
    seen_keys = {admin.key_sha256: ADMIN} if admin else {}
    for t in tenants:
        if t.name in seen_names:
            raise TenantsError(path, f"tenant {t.name!r}.name", "duplicate tenant name")
        if t.key_sha256 in seen_keys:
            raise TenantsError(path, f"tenant {t.name!r}.key_sha256", f"same key as {seen_keys[t.key_sha256]!r}")
        seen_names.add(t.name)
        seen_keys[t.key_sha256] = t.name
    return Tenants(str(path), tenants, admin)


def load_tenants(path: str | Path) -> Tenants:
    """Read and validate a tenants TOML file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TenantsError(path, "(file)", "not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TenantsError(path, "(file)", f"cannot read ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise TenantsError(path, "(file)", f"not valid TOML ({exc})") from None
    return parse_tenants(data, path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m selora_serve.tenants",
                                     description="Make keys and their hashes for a selora-serve tenants file.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("hash-key", help="print the sha256 hex of the key read from stdin (one line)")
    sub.add_parser("new-key", help="print a new random API key and, on the next line, its sha256 hex")
    sub.add_parser("check", help="validate a tenants file").add_argument("file")
    args = parser.parse_args(argv)
    if args.command == "hash-key":
        key = sys.stdin.readline().rstrip("\r\n")
        if not key:
            print("error: no key on stdin", file=sys.stderr)
            return 2
        print(hash_key(key))
    elif args.command == "new-key":
        key = "sk-" + secrets.token_urlsafe(32)
        print(key)
        print(hash_key(key))
    else:
        try:
            tenants = load_tenants(args.file)
        except TenantsError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"{args.file}: {len(tenants.tenants)} tenant(s), admin key {'set' if tenants.admin else 'not set'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
