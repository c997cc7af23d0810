"""One exception root: every exception class horde-scanner (and local_gpu) defines derives
from HordeScannerError, through the branch that says whether to retry (errors.py)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

from horde_scanner.backends.base import BackendFailed, BackendUnavailable
from horde_scanner.errors import FinalError, HordeScannerError, InvalidInput, RetryLater


def _modules(package: str) -> list[str]:
    root = importlib.import_module(package)
    return [
        m.name
        for m in pkgutil.walk_packages(root.__path__, f"{package}.")
        if not m.name.endswith("__main__")
    ]


def _exception_classes(package: str) -> list[type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for name in _modules(package):
        try:
            module = importlib.import_module(name)
        except ImportError:  # an optional extra (torch for local_gpu) that is not installed
            continue
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if obj.__module__ == name and issubclass(obj, BaseException):
                found[f"{name}.{obj.__qualname__}"] = obj
    return list(found.values())


def test_every_exception_class_has_the_one_root():
    classes = _exception_classes("horde_scanner")
    assert len(classes) >= 29
    wrong = [c.__qualname__ for c in classes if not issubclass(c, HordeScannerError)]
    assert wrong == []


def test_local_gpu_s_exceptions_too():
    pytest.importorskip("torch")
    classes = _exception_classes("local_gpu")
    assert classes
    assert [c for c in classes if not issubclass(c, HordeScannerError)] == []


def test_each_is_on_one_branch_and_the_backends_keep_their_split():
    for cls in _exception_classes("horde_scanner"):
        if cls in (HordeScannerError,):
            continue
        on = [b for b in (RetryLater, FinalError) if issubclass(cls, b)]
        assert len(on) <= 1, cls
    # Cannot judge now (the job backs off and retries) vs never (an `error` verdict).
    assert issubclass(BackendUnavailable, RetryLater) and BackendUnavailable("x").retry_later
    assert issubclass(BackendFailed, FinalError) and not BackendFailed("x").retry_later
    late = BackendUnavailable("busy", retry_after_s=7.0)
    assert (late.reason, late.retry_after_s) == ("busy", 7.0)
    assert issubclass(InvalidInput, FinalError)
