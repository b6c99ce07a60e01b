"""The job on gs:// inputs and outputs, through the real google-cloud-storage client on a loopback emulator."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
from google.cloud import storage

from clients.settings import Settings, get_settings
from clients.storage import store_for
from inference.contract import DE_FILE, GENE_MEANS_FILE, MANIFEST_FILE, PREDICTIONS_FILE, PROGRESS_FILE, SUMMARY_FILE, JobManifest
from inference.stack_job import OutputExistsError, run_job
from tests.fake_gcs import GcsEmulator, gcs_emulator
from tests.inference.conftest import TinyInputs

BUCKET = "stack-job-test"


@pytest.fixture(scope="module")
def gcs_server() -> Iterator[GcsEmulator]:
    with gcs_emulator() as gcs:
        yield gcs


@pytest.fixture
def gcs(gcs_server: GcsEmulator, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[GcsEmulator]:
    gcs_server.reset()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server.url)
    get_settings.cache_clear()
    storage.Client().create_bucket(BUCKET)
    yield gcs_server
    get_settings.cache_clear()


def test_inference_job_on_gcs_reads_inputs_and_writes_outputs_create_only(
    gcs: GcsEmulator, tiny: TinyInputs, tmp_path: Path
) -> None:
    store = store_for(f"gs://{BUCKET}/x")
    uris = {}
    for name, path in {"query": tiny.query, "prompt": tiny.prompt, "genes": tiny.genes}.items():
        uris[name] = store.put_file(path, f"gs://{BUCKET}/inputs/{path.name}").uri
    # No .ckpt suffix on purpose: the job must still hand arc-stack's loader a .ckpt name.
    uris["ckpt"] = store.put_file(tiny.generate_ckpt, f"gs://{BUCKET}/models/aligned").uri
    prefix = f"gs://{BUCKET}/runs/1"
    gcs.proxy.reset()
    manifest = run_job(
        tiny.spec(prefix, query_uri=uris["query"], prompt_uri=uris["prompt"], gene_list_uri=uris["genes"],
                  checkpoint_uri=uris["ckpt"])
    )

    assert sorted(store.list(prefix)) == [f"{prefix}/{n}" for n in sorted([MANIFEST_FILE, PREDICTIONS_FILE,
                                                                            PROGRESS_FILE, SUMMARY_FILE, DE_FILE,
                                                                            GENE_MEANS_FILE])]
    assert json.loads(store.get_bytes(f"{prefix}/{PROGRESS_FILE}"))["phase"] == "done"
    assert JobManifest.model_validate_json(store.get_bytes(f"{prefix}/{MANIFEST_FILE}")) == manifest
    # Every output but progress.json was created with ifGenerationMatch=0; progress was replaced in place.
    starts = gcs.proxy.upload_starts()
    by_name: dict[str, list] = {}
    for req in starts:
        by_name.setdefault(req.object_name, []).append(req)
    for name in (PREDICTIONS_FILE, SUMMARY_FILE, DE_FILE, GENE_MEANS_FILE, MANIFEST_FILE):
        (req,) = by_name[f"runs/1/{name}"]
        assert req.query.get("ifGenerationMatch") == ["0"]
    assert len(by_name[f"runs/1/{PROGRESS_FILE}"]) >= 3  # loading, generating, ..., done
    # Same spec on file:// gives the same predictions.
    local = run_job(tiny.spec(tmp_path / "local"))
    ours = ad.read_h5ad(store.get_file(f"{prefix}/{PREDICTIONS_FILE}", tmp_path / "gcs.h5ad"))
    assert np.array_equal(ours.X.toarray(), ad.read_h5ad(tmp_path / "local" / PREDICTIONS_FILE).X.toarray())
    assert local.outputs[SUMMARY_FILE] == manifest.outputs[SUMMARY_FILE]
    assert local.outputs[DE_FILE] == manifest.outputs[DE_FILE]  # the DE is deterministic too

    with pytest.raises(OutputExistsError, match="already holds"):
        run_job(tiny.spec(prefix, query_uri=uris["query"], prompt_uri=uris["prompt"],
                          gene_list_uri=uris["genes"], checkpoint_uri=uris["ckpt"]))
