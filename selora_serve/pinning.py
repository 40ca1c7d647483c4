"""Pins on other projects' internals: each one we touch, checked before we touch it.

    problems = check_hooks(HOOKS)   # one line per internal that differs from what we expect

An integration (`vllm_ext.pin`, `ray.pin`) lists every internal it relies on as a `Hook`: where it
lives, its exact parameters, and fragments of its source the integration depends on. Checking
them at start-up turns an upgrade that moved something into an error naming it, instead of
adapters served wrongly. Imports neither vLLM nor Ray (it imports what a hook names, when asked).
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass


@dataclass(frozen=True)
class Hook:
    """One internal of vLLM or Ray we rely on: `module`.`qualname`, its parameters, and source fragments."""

    module: str
    qualname: str
    params: tuple[str, ...] | None = None  # exact parameter names, in order (None: not checked)
    source_has: tuple[str, ...] = ()  # fragments of its source our patch depends on
    why: str = ""


def _resolve(hook: Hook):
    obj = importlib.import_module(hook.module)
    for part in hook.qualname.split("."):
        obj = getattr(obj, part)
    return obj


def check_hooks(hooks: tuple[Hook, ...]) -> list[str]:
    """One line per hooked internal that differs from what the integration expects."""
    problems = []
    for hook in hooks:
        where = f"{hook.module}.{hook.qualname}"
        try:
            obj = _resolve(hook)
        except (ImportError, AttributeError) as exc:
            problems.append(f"{where}: not found ({exc})")
            continue
        func = inspect.unwrap(getattr(obj, "__func__", obj))
        if hook.params is not None:
            got = tuple(inspect.signature(func).parameters)
            if got != hook.params:
                problems.append(f"{where}: parameters are {got}, expected {hook.params}")
        if hook.source_has:
            try:
                source = inspect.getsource(func)
            except (OSError, TypeError):
                problems.append(f"{where}: source unavailable, cannot verify")
                continue
            for fragment in hook.source_has:
                if fragment not in source:
                    problems.append(f"{where}: no longer contains {fragment!r}")
    return problems
