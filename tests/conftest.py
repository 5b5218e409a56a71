"""Shared test set-up: offline, no wandb, and a throwaway cache for the whole session."""
from __future__ import annotations

import os
import shutil
import tempfile

import pytest

# Set at import time so that every module imported by the tests (and every notebook kernel the
# tests start, which inherits the environment) sees them.
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
_OWN_CACHE: str | None = None
if not os.environ.get("UNIVERSALITY_CACHE"):
    _OWN_CACHE = tempfile.mkdtemp(prefix="universality-test-cache-")
    os.environ["UNIVERSALITY_CACHE"] = _OWN_CACHE


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "notebooks: executes the book's notebooks (slow; the CI notebook check)"
    )


def pytest_unconfigure(config: pytest.Config) -> None:
    if _OWN_CACHE is not None:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def chromium() -> str:
    """Headless Chromium's path, for the tests that open pages in a browser. Without one the test is skipped, but
    fails under CI (``CI`` set): .ci/run installs Debian's ``chromium``, so the pages are always drawn there."""
    path = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    if path is None:
        msg = "no headless Chromium on the PATH (Debian: apt-get install chromium; .ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(f"{msg}: under CI the browser tests must run, not skip")
        pytest.skip(msg)
    return path


@pytest.fixture
def results_env(tmp_path, monkeypatch):
    """A private results directory (UNIVERSALITY_RESULTS_DIR) with no chapter/preset set."""
    d = tmp_path / "results"
    monkeypatch.setenv("UNIVERSALITY_RESULTS_DIR", str(d))
    monkeypatch.delenv("UNIVERSALITY_CHAPTER", raising=False)
    monkeypatch.delenv("UNIVERSALITY_PRESET", raising=False)
    return d
