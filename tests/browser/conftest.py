"""The local stack with the Prefect UI on (SQLite), one forged run on it, and Debian's chromium to
look at it: one stack and one browser per module, a fresh browser context (no login, no storage) per
test. The run's question carries script and a markdown heading, as an attacker's or a careless
user's would."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, sync_playwright

from deployments.local_stack import LocalStack, model_env, running_local_stack
from tests.browser.browsing import CHROMIUM_ARGS, Browsing, require_chromium
from tests.small_inputs import Inputs, make_inputs

TOKEN = "browser-token-5c1e"
FAKE_CLAIM = "# Model: TRAINED, results validated"
SCRIPT = "<script>window.__pwned=1</script>"
IMG = '<img src=x onerror="window.__pwned=1">'
QUESTION = f"Which genes do monocytes raise among B cells? {SCRIPT} {IMG}\n{FAKE_CLAIM}\nThanks."
UNTRAINED_WARNING = "The STACK checkpoint is untrained (randomly initialised)."


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Everything the module's stack writes: inputs, objects, server database, logs."""
    require_chromium()  # before minutes of stack start-up: a missing chromium fails (or skips) at once
    return tmp_path_factory.mktemp("browser")


@pytest.fixture(scope="module")
def inputs(root: Path) -> Inputs:
    return make_inputs(root / "data")


@pytest.fixture(scope="module")
def stack(root: Path, inputs: Inputs) -> Iterator[LocalStack]:
    """Server with its UI, deployments, worker and API on loopback; SQLite, the embedded default."""
    extra_env = model_env(inputs.checkpoint, inputs.gene_list)
    with running_local_stack(root, root / "data", TOKEN, ui=True, extra_env=extra_env) as running:
        yield running


@pytest.fixture(scope="module")
def forged_run(stack: LocalStack, inputs: Inputs) -> dict:
    """GET /runs/{id} of a completed run whose question tries to run script and forge a heading."""
    with stack.api() as api:
        created = api.post("/runs", json=inputs.request_body(QUESTION))
    assert created.status_code == 202, created.text
    run = stack.wait_for_run(created.json()["id"])
    assert run["state"]["type"] == "COMPLETED", run["state"]
    return run


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=require_chromium(), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def browsing(browser: Browser, tmp_path: Path) -> Iterator[Browsing]:
    """A fresh context per test; screenshots go to the test's tmp dir (``screenshots/``)."""
    session = Browsing.open(browser, tmp_path / "screenshots")
    yield session
    session.close()


def artifact(run: dict, key: str) -> dict:
    """The run's artifact with ``key``, as GET /runs/{id} lists it."""
    found = [a for a in run["artifacts"] if a["key"] == key]
    assert len(found) == 1, f"expected one artifact {key!r}, GET /runs listed {[a['key'] for a in run['artifacts']]}"
    return found[0]
