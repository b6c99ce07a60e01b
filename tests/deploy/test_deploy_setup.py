"""deployments.setup's pieces against the session's real Prefect server: each is created once and
then left alone; the gcp set-up refuses to start without what Cloud Run needs."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from prefect import get_client
from prefect.blocks.system import Secret
from prefect.filesystems import LocalFileSystem

from api.settings import ApiSettings
from clients.batch.settings import BatchSettings
from clients.settings import Settings
from clients.storage.settings import StorageSettings
from deployments import setup as deploy_setup


def run(coro):
    return asyncio.run(coro)


async def _twice(make) -> tuple[str, str]:
    async with get_client() as client:
        first = await make(client)
        second = await make(client)
    return first.action, second.action


def test_work_pools_are_created_once_and_follow_the_template(prefect_api: None) -> None:
    template = deploy_setup.local_pool_template()
    first, second = run(_twice(lambda c: deploy_setup.ensure_work_pool(c, "setup-test-local", "process", template)))
    assert (first, second) == ("created", "unchanged")

    changed = json.loads(json.dumps(template))
    changed["variables"]["properties"]["working_dir"]["default"] = "/srv/stackflows"

    async def update(client):
        return await deploy_setup.ensure_work_pool(client, "setup-test-local", "process", changed)

    assert run(_twice(update)) == ("updated", "unchanged")


def test_a_pool_of_another_type_is_not_overwritten(prefect_api: None) -> None:
    run(_twice(lambda c: deploy_setup.ensure_work_pool(c, "setup-test-typed", "process", {})))
    with pytest.raises(deploy_setup.SetupError, match="prefect work-pool delete setup-test-typed"):
        run(_twice(lambda c: deploy_setup.ensure_work_pool(c, "setup-test-typed", "cloud-run-v2", {})))


def test_the_gpu_concurrency_limit_is_created_once(prefect_api: None) -> None:
    first, second = run(_twice(deploy_setup.ensure_gpu_limit))
    assert first in ("created", "unchanged") and second == "unchanged"


def test_the_gpu_limit_has_room_for_one_sharded_round(prefect_api: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Prefect refuses a holder asking for more slots than a limit has: a round running 4 shards at once
    (STACKFLOWS_BATCH__MAX_PARALLEL_SHARDS=4) needs a limit of at least 4."""
    from clients.batch.settings import GPU_CONCURRENCY_LIMIT
    from clients.settings import get_settings

    async def set_up_and_read() -> int:
        async with get_client() as client:
            await deploy_setup.ensure_gpu_limit(client)
            return (await client.read_global_concurrency_limit_by_name(GPU_CONCURRENCY_LIMIT)).limit

    monkeypatch.setenv("STACKFLOWS_BATCH__MAX_PARALLEL_SHARDS", "4")
    get_settings.cache_clear()
    try:
        assert run(set_up_and_read()) == 4
    finally:
        monkeypatch.delenv("STACKFLOWS_BATCH__MAX_PARALLEL_SHARDS")
        get_settings.cache_clear()
    assert run(set_up_and_read()) == deploy_setup.GPU_LIMIT_SLOTS  # the default again, for the other tests


def test_blocks_are_saved_once_and_updated_when_they_differ(prefect_api: None, tmp_path: Path) -> None:
    results = LocalFileSystem(basepath=str(tmp_path / "results"))
    assert run(deploy_setup.ensure_block(results, "setup-test-results")).action == "created"
    assert run(deploy_setup.ensure_block(results, "setup-test-results")).action == "unchanged"
    moved = LocalFileSystem(basepath=str(tmp_path / "elsewhere"))
    assert run(deploy_setup.ensure_block(moved, "setup-test-results")).action == "updated"

    assert run(deploy_setup.ensure_block(Secret(value="sk-one"), "setup-test-key")).action == "created"
    assert run(deploy_setup.ensure_block(Secret(value="sk-one"), "setup-test-key")).action == "unchanged"
    assert run(deploy_setup.ensure_block(Secret(value="sk-two"), "setup-test-key")).action == "updated"


def test_cloud_run_env_carries_run_settings_but_never_the_api_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    settings = Settings(
        storage=StorageSettings(root="gs://lab-bucket/stackflows", project="lab"),
        batch=BatchSettings(project="lab"),
        api=ApiSettings(token="api-secret"),
    )
    env = deploy_setup.flow_run_env(settings)
    assert env["STACKFLOWS_STORAGE__ROOT"] == "gs://lab-bucket/stackflows"
    assert env["STACKFLOWS_BATCH__PROJECT"] == "lab"
    assert env["STACKFLOWS_BATCH__BACKEND"] == "cloud"
    assert env["STACKFLOWS_BATCH__RESULT_STORAGE"] == "gcs-bucket/stackflows-results"
    assert not any(k.startswith(("STACKFLOWS_API", "STACKFLOWS_FAULTS")) for k in env)
    assert "api-secret" not in json.dumps(env)


def test_gcp_setup_names_what_is_missing(prefect_api: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in deploy_setup.GCP_DEPLOY_ENV:
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(deploy_setup.SetupError, match="STACKFLOWS_FLOW_IMAGE"):
        run(deploy_setup.setup("gcp", Settings(data_dir=tmp_path)))
    for var in deploy_setup.GCP_DEPLOY_ENV:
        monkeypatch.setenv(var, "x")
    with pytest.raises(deploy_setup.SetupError, match="STACKFLOWS_STORAGE__ROOT=gs://"):
        run(deploy_setup.setup("gcp", Settings(data_dir=tmp_path)))


def test_the_fingerprint_follows_prefect_yaml_and_deploy_time_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "analysis_run.py").write_text("# flow\n")
    (tmp_path / "prefect.yaml").write_text("image: '{{ $STACKFLOWS_FLOW_IMAGE }}'\nversion: '{{ $STACKFLOWS_DEPLOY_VERSION }}'\n")
    monkeypatch.setenv("STACKFLOWS_FLOW_IMAGE", "img:1")
    first = deploy_setup.deployment_fingerprint(tmp_path)
    monkeypatch.setenv("STACKFLOWS_DEPLOY_VERSION", "anything")  # its own output does not feed back
    assert deploy_setup.deployment_fingerprint(tmp_path) == first
    monkeypatch.setenv("STACKFLOWS_FLOW_IMAGE", "img:2")
    assert deploy_setup.deployment_fingerprint(tmp_path) != first
    monkeypatch.setenv("STACKFLOWS_FLOW_IMAGE", "img:1")
    (tmp_path / "flows" / "analysis_run.py").write_text("# flow, new signature\n")
    assert deploy_setup.deployment_fingerprint(tmp_path) != first


def test_the_gcs_result_storage_block_is_saved_once(
    prefect_api: None, service_account_info: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file = tmp_path / "sa.json"
    key_file.write_text(json.dumps(service_account_info))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))  # read from disk, no metadata server
    settings = Settings(storage=StorageSettings(root="gs://lab-bucket/stackflows", project="lab"))
    block = deploy_setup.result_storage_block("gcp", settings)
    assert (block.bucket, block.bucket_folder) == ("lab-bucket", "stackflows/prefect-results/")
    assert run(deploy_setup.ensure_block(block, "setup-test-gcs")).action == "created"
    again = deploy_setup.result_storage_block("gcp", settings)
    assert run(deploy_setup.ensure_block(again, "setup-test-gcs")).action == "unchanged"


def test_canary_requests_name_absolute_paths_and_the_local_one_its_checkpoint() -> None:
    """A relative path means whatever the flow run's working directory makes of it, and the flow's
    allowed-roots check refuses it; the local canary names a checkpoint that fits its gene list."""
    import yaml

    config = yaml.safe_load((deploy_setup.PROJECT_DIR / "prefect.yaml").read_text())
    canaries = {d["name"]: d["parameters"]["request"] for d in config["deployments"] if "canary" in d["name"]}
    assert set(canaries) == {"nightly-canary", "nightly-canary-cloud"}
    local_dir = "file://{{ $" + deploy_setup.CANARY_DIR_VAR + " }}/"
    for name, request in canaries.items():
        for field in ("prompt_uri", "query_uri", "gene_list_uri", "checkpoint_uri"):
            if field in request:
                expected = local_dir if name == "nightly-canary" else "file:///opt/stackflows/"
                assert request[field].startswith(expected), (name, field, request[field])
    assert canaries["nightly-canary"]["checkpoint_uri"] == local_dir + "stack-untrained-tiny.ckpt"


def test_the_local_canary_directory_is_absolute_in_the_data_directory_and_in_the_fingerprint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    variables = deploy_setup.deploy_variables("local", Settings(data_dir=Path("rel-data")))
    assert variables == {deploy_setup.CANARY_DIR_VAR: str(tmp_path / "rel-data" / "demo")}
    assert deploy_setup.deploy_variables("gcp", Settings(data_dir=tmp_path)) == {}

    (tmp_path / "flows").mkdir()
    (tmp_path / "prefect.yaml").write_text("prompt_uri: 'file://{{ $STACKFLOWS_CANARY_DIR }}/x.h5ad'\n")
    first = deploy_setup.deployment_fingerprint(tmp_path, {deploy_setup.CANARY_DIR_VAR: "/srv/a"})
    assert deploy_setup.deployment_fingerprint(tmp_path, {deploy_setup.CANARY_DIR_VAR: "/srv/b"}) != first
