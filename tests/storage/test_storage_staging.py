"""The staging tasks in Prefect flow runs: scanpy's pbmc68k_reduced (as demo counts) to file:// and gs://."""

from __future__ import annotations

import os
from pathlib import Path
from uuid import UUID

import pytest
from prefect import flow
from prefect.client.orchestration import get_client

from clients.settings import Settings
from clients.storage import store_for
from clients.storage.digests import digest_file
from deployments.demo_data import DemoData, prepare_demo_data
from tasks.validation import InputValidationError
from tasks.staging import StagedInput, stage_input, validate_input
from tests.fake_gcs import Fault, GcsEmulator


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoData:
    return prepare_demo_data(tmp_path_factory.mktemp("demo"))


@flow
def stage_flow(source: str, gene_list_uri: str | None = None, required_obs: dict | None = None) -> StagedInput:
    facts = validate_input(source, gene_list_uri, required_obs=required_obs)
    return stage_input(source, facts)


@flow
def validate_flow(source: str) -> tuple[UUID, BaseException | None]:
    state = validate_input(source, return_state=True)
    return state.state_details.task_run_id, state.result(raise_on_failure=False) if state.is_failed() else None


def run_count(task_run_id: UUID) -> int:
    with get_client(sync_client=True) as client:
        return client.read_task_run(task_run_id).run_count


def test_storage_staging_pbmc68k_to_gcs(prefect_api, gcs: GcsEmulator, demo: DemoData, tmp_path: Path) -> None:
    sha = digest_file(demo.h5ad).sha256

    staged = stage_flow(str(demo.h5ad), str(demo.gene_list), {"bulk_labels": ["Dendritic", "CD14+ Monocyte"]})

    assert staged.uri == f"gs://stackflows-test/root/inputs/{sha}/pbmc68k_counts.h5ad"
    assert staged.uploaded and staged.sha256 == sha and staged.size_bytes == demo.h5ad.stat().st_size
    assert staged.shape == (700, 765) and staged.gene_overlap == 1.0
    assert staged.facts.counts_location == "X" and staged.facts.sha256 == sha  # facts name the bytes checked
    assert staged.facts.obs_column("bulk_labels").value_counts["Dendritic"] == 240
    back = store_for(staged.uri).get_file(staged.uri, tmp_path / "back.h5ad")
    assert digest_file(back).sha256 == sha

    gcs.proxy.reset()
    again = stage_flow(str(demo.h5ad), str(demo.gene_list))

    assert again.uri == staged.uri
    assert gcs.proxy.upload_starts() == []  # a second flow run uploads nothing


def test_storage_staging_pbmc68k_to_local_default(prefect_api, settings: Settings, demo: DemoData) -> None:
    staged = stage_flow(str(demo.h5ad), str(demo.gene_list))

    assert staged.uri.startswith(settings.storage_root + "/inputs/")
    assert store_for(staged.uri).local_path(staged.uri).read_bytes() == demo.h5ad.read_bytes()


def test_storage_staging_bad_input_fails_without_retries(prefect_api, settings: Settings, tmp_path: Path) -> None:
    bad = tmp_path / "cells.h5ad"
    bad.write_text("barcode,CD3E\nAAAC,1\n")

    task_run_id, error = validate_flow(str(bad))

    assert isinstance(error, InputValidationError) and "not an HDF5 file" in error.problem
    assert run_count(task_run_id) == 1  # the task has retries, but a bad file is not retried


def test_storage_staging_transient_storage_errors_are_retried(
    prefect_api, gcs: GcsEmulator, monkeypatch: pytest.MonkeyPatch, demo: DemoData
) -> None:
    # The client's own Retry gives up at once (tiny timeout), so the 503 reaches the Prefect task.
    monkeypatch.setenv("STACKFLOWS_STORAGE__RETRY_TIMEOUT_S", "0.01")
    from clients.settings import get_settings

    get_settings.cache_clear()
    gcs.proxy.faults.append(Fault(lambda r: r.is_upload_start(), times=1, status=503))

    @flow
    def stage_with_fast_retries(source: str) -> tuple[UUID, StagedInput]:
        facts = validate_input(source)
        state = stage_input.with_options(retry_delay_seconds=0)(source, facts, return_state=True)
        return state.state_details.task_run_id, state.result()

    task_run_id, staged = stage_with_fast_retries(str(demo.h5ad))

    assert staged.uploaded and gcs.proxy.faults[0].times == 0
    assert run_count(task_run_id) == 2
    assert os.path.basename(staged.uri) == "pbmc68k_counts.h5ad"


def test_storage_staging_refuses_a_file_changed_after_validation(
    prefect_api, settings: Settings, demo: DemoData, tmp_path: Path
) -> None:
    source = tmp_path / "cells.h5ad"
    source.write_bytes(demo.h5ad.read_bytes())

    @flow
    def validate_edit_stage(path: str) -> BaseException | None:
        facts = validate_input(path)
        with open(path, "ab") as fh:  # someone edits the file between the two steps
            fh.write(b"\0")
        state = stage_input(path, facts, return_state=True)
        return state.result(raise_on_failure=False) if state.is_failed() else None

    error = validate_edit_stage(str(source))

    assert isinstance(error, InputValidationError) and "changed after it was validated" in error.problem
    assert not (Path(settings.storage_root.removeprefix("file://")) / "inputs").exists()


def test_storage_staging_input_given_as_gs_uri(prefect_api, gcs: GcsEmulator, demo: DemoData) -> None:
    """A user's input already in a bucket: downloaded once to validate, then staged by content."""
    source = "gs://stackflows-test/uploads/pbmc68k_counts.h5ad"
    store_for(source).put_file(demo.h5ad, source)
    sha = digest_file(demo.h5ad).sha256

    staged = stage_flow(source, str(demo.gene_list), {"phase": ["G1"]})

    assert staged.source == source
    assert staged.uri == f"gs://stackflows-test/root/inputs/{sha}/pbmc68k_counts.h5ad"
    assert staged.facts.sha256 == sha and staged.facts.obs_column("phase").value_counts["G1"] == 501
    media_gets = [r for r in gcs.proxy.requests if r.query.get("alt") == ["media"]]
    assert len(media_gets) == 1  # validate-input and stage-input share one download
