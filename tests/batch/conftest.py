"""Batch test fixtures: a stand-in job interpreter, the fake Batch API, settings for each backend."""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from clients.settings import Settings, get_settings
from inference.contract import StackJobSpec
from tests.fake_batch_api import FakeBatchApi

STANDIN_JOB = Path(__file__).with_name("standin_job.py")
STANDIN_IMAGE = "example.test/stackflows/standin-job:1"


def wait_until(condition: Callable[[], object], timeout: float = 30.0, what: str = "condition") -> object:
    """Poll ``condition`` until it returns something truthy, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def process_gone(pid: int) -> bool:
    """No process with that pid, or only its zombie (nothing runs any more)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"


def job_pid(job_id: str, request: pytest.FixtureRequest) -> int:
    """The pid (and process group) of a job's process on whichever backend the test uses."""
    settings = get_settings()
    if settings.batch.backend == "local":
        return int((settings.data_dir / "jobs" / job_id / "pid").read_text().split()[0])
    return request.getfixturevalue("fake_batch").pid_of(job_id)


@pytest.fixture
def standin_python(tmp_path: Path) -> Path:
    """A `python` that runs the stand-in job for `-m inference.stack_job` and is the venv's interpreter otherwise."""
    script = tmp_path / "standin-bin" / "python"
    script.parent.mkdir()
    py = shlex.quote(sys.executable)
    script.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "-m" ] && [ "$2" = "inference.stack_job" ]; then\n'
        f"  shift 2; exec {py} {shlex.quote(str(STANDIN_JOB))} \"$@\"\n"
        "fi\n"
        f'exec {py} "$@"\n'
    )
    script.chmod(0o755)
    return script


@pytest.fixture
def spec(tmp_path: Path) -> StackJobSpec:
    """A job spec whose outputs go to a fresh local directory (the stand-in does not read the inputs)."""
    return StackJobSpec(
        mode="embed",
        query_uri=(tmp_path / "query.h5ad").as_uri(),
        checkpoint_uri=(tmp_path / "model.ckpt").as_uri(),
        gene_list_uri=(tmp_path / "genes.pkl").as_uri(),
        output_prefix=(tmp_path / "outputs" / "run-1").as_uri(),
    )


@pytest.fixture
def fake_batch(standin_python: Path) -> Iterator[FakeBatchApi]:
    with FakeBatchApi() as fake:
        fake.images[STANDIN_IMAGE] = str(standin_python)
        yield fake


@pytest.fixture
def local_settings(settings: Settings, standin_python: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Local process backend whose job interpreter is the stand-in."""
    monkeypatch.setenv("STACKFLOWS_BATCH__BACKEND", "local")
    monkeypatch.setenv("STACKFLOWS_BATCH__LOCAL_PYTHON", str(standin_python))
    monkeypatch.setenv("STACKFLOWS_BATCH__POLL_INITIAL_S", "0.1")
    monkeypatch.setenv("STACKFLOWS_BATCH__POLL_MAX_S", "0.5")
    get_settings.cache_clear()
    return get_settings()


@pytest.fixture
def cloud_settings(settings: Settings, fake_batch: FakeBatchApi, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Cloud Batch backend talking to the fake API, whose stand-in image runs the stand-in job."""
    for key, value in {
        "BACKEND": "cloud",
        "PROJECT": "test-project",
        "REGION": "us-central1",
        "IMAGE": STANDIN_IMAGE,
        "API_ENDPOINT": fake_batch.endpoint,
        "ANONYMOUS_CREDENTIALS": "true",
        "POLL_INITIAL_S": "0.1",
        "POLL_MAX_S": "0.5",
    }.items():
        monkeypatch.setenv(f"STACKFLOWS_BATCH__{key}", value)
    get_settings.cache_clear()
    return get_settings()


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """Choose what the stand-in job does: succeed, fail or hang (inherited by job processes)."""
    return lambda behaviour: monkeypatch.setenv("STACKFLOWS_TEST_STANDIN", behaviour)


@pytest.fixture
def real_job_spec(tmp_path: Path) -> StackJobSpec:
    """Inputs for the real STACK job: tiny random counts, a gene list and an untrained checkpoint."""
    import anndata as ad
    import numpy as np
    import pandas as pd

    from inference.make_checkpoint import build_checkpoint, write_gene_list

    genes = [f"GENE{i}" for i in range(24)]
    write_gene_list(genes, tmp_path / "genes.pkl")
    build_checkpoint(genes, tmp_path / "model.ckpt")
    cell_types = ["mono"] * 16 + ["bcell"] * 16 + ["dc"] * 16
    counts = np.random.default_rng(0).poisson(2.0, size=(len(cell_types), len(genes))).astype(np.float32)
    cells = ad.AnnData(
        X=counts,
        obs=pd.DataFrame({"cell_type": cell_types}, index=[f"cell{i}" for i in range(len(cell_types))]),
        var=pd.DataFrame(index=genes),
    )
    cells.write_h5ad(tmp_path / "cells.h5ad")
    return StackJobSpec(
        mode="generate",
        query_uri=(tmp_path / "cells.h5ad").as_uri(),
        prompt_uri=(tmp_path / "cells.h5ad").as_uri(),
        query_obs_filter={"cell_type": ["dc"]},
        prompt_obs_filter={"cell_type": ["mono", "bcell"]},
        split_column="cell_type",
        num_steps=2,
        checkpoint_uri=(tmp_path / "model.ckpt").as_uri(),
        gene_list_uri=(tmp_path / "genes.pkl").as_uri(),
        output_prefix=(tmp_path / "outputs" / "real").as_uri(),
    )
