"""Browser fixtures: Debian's chromium driven by Playwright, a `tasklift server` on SQLite.

Chromium comes from Debian (scripts/install-browser.sh), never from `playwright install`.
The server helpers are those of tests/service/conftest.py, loaded from its file.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = REPO / "test-artifacts" / "screenshots"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _service_fixtures() -> ModuleType:
    """tests/service/conftest.py as a plain module (for start_server and Server)."""
    name = "tasklift_e2e_service_fixtures"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "tests" / "service" / "conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _unavailable(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's chromium, installed by scripts/install-browser.sh when missing."""
    if not CHROMIUM.exists():
        script = REPO / "scripts" / "install-browser.sh"
        try:
            proc = subprocess.run(
                ["bash", str(script)], capture_output=True, text=True, timeout=900, check=False
            )
            output = (proc.stdout[-1500:] + proc.stderr[-1500:]).strip()
        except (OSError, subprocess.TimeoutExpired) as exc:
            output = str(exc)
        if not CHROMIUM.exists():
            _unavailable(
                f"browser tests need Debian chromium at {CHROMIUM}; "
                f"scripts/install-browser.sh could not install it:\n{output}"
            )
    return CHROMIUM


@pytest.fixture(scope="module")
def browser(chromium: Path) -> Iterator[Any]:
    """One headless chromium for the whole session."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("browser tests need Playwright for Python: pip install playwright")
        raise
    with sync_playwright() as p:
        instance = p.chromium.launch(
            executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS
        )
        yield instance
        instance.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A `tasklift server` on a SQLite file, shared by the browser tests."""
    helpers = _service_fixtures()
    root = tmp_path_factory.mktemp("e2e-server")
    srv = helpers.start_server(f"sqlite:///{root / 'server.db'}", root / "server-home")
    yield srv
    srv.stop()


@pytest.fixture
def page(browser: Any, server: Any) -> Iterator[Any]:
    """A fresh browser context (no cookies) and page on the server, 1280 x 900."""
    context = browser.new_context(base_url=server.url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(20_000)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    yield tab
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture
def screenshot(request: pytest.FixtureRequest) -> Callable[[Any, str], Path]:
    """Save a full-page screenshot under test-artifacts/screenshots/<test>-<name>.png."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def take(tab: Any, name: str) -> Path:
        path = SCREENSHOTS / f"{request.node.name}-{name}.png"
        tab.screenshot(path=str(path), full_page=True)
        return path

    return take
