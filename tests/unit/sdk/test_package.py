"""`from hutch import Sandbox, AsyncSandbox` works and exposes the e2b-shaped surface."""

from __future__ import annotations

import inspect

import hutch
from hutch import sdk


def test_top_level_names_are_the_sdk_classes() -> None:
    assert hutch.Sandbox is sdk.Sandbox
    assert hutch.AsyncSandbox is sdk.AsyncSandbox


def test_async_sandbox_mirrors_sandbox() -> None:
    """Every public method of the blocking classes exists on the asyncio ones, as a coroutine
    where the blocking one does I/O, with the same parameters."""
    pairs = [
        (sdk.Sandbox, sdk.AsyncSandbox),
        (sdk.sandbox_sync.Commands, sdk.sandbox_async.AsyncCommands),
        (sdk.sandbox_sync.Files, sdk.sandbox_async.AsyncFiles),
        (sdk.sandbox_sync.Pty, sdk.sandbox_async.AsyncPty),
        (sdk.CommandHandle, sdk.AsyncCommandHandle),
        (sdk.PtyHandle, sdk.AsyncPtyHandle),
    ]
    for sync_cls, async_cls in pairs:
        for name, fn in inspect.getmembers(sync_cls, inspect.isfunction):
            if name.startswith("_"):
                continue
            twin = getattr(async_cls, name, None)
            if name == "close" and twin is None:
                twin = async_cls.aclose  # type: ignore[attr-defined]
            assert twin is not None, f"{async_cls.__name__}.{name} is missing"
            sync_params = list(inspect.signature(fn).parameters)
            async_params = list(inspect.signature(twin).parameters)
            assert sync_params == async_params, f"{name}: {sync_params} != {async_params}"


def test_every_exception_is_exported() -> None:
    for name in sdk.exceptions.__all__:
        assert hasattr(sdk, name), name


def test_constructors_take_the_same_arguments() -> None:
    for name in ("create", "connect", "list"):
        s = inspect.signature(getattr(sdk.Sandbox, name))
        a = inspect.signature(getattr(sdk.AsyncSandbox, name))
        assert s.parameters.keys() == a.parameters.keys(), name
    assert inspect.iscoroutinefunction(sdk.AsyncSandbox.create)
    assert inspect.iscoroutinefunction(sdk.AsyncSandbox.connect)
