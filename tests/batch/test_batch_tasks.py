"""Jobs of several tasks (a sharded job's shards) on both runners: the local one runs them as processes
of the job's one process group, the cloud one as a Batch task group (the real google-cloud-batch client
against the fake Batch API, which runs each task as a process). Each task sees its own BATCH_TASK_INDEX,
``parallelism`` bounds how many run at once, a failed task is named with its exit code and stderr, and
cancel stops every task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clients.batch import (
    BatchJobRequest,
    BatchRunner,
    JobState,
    JobStatus,
    runner_from_settings,
)
from clients.settings import Settings
from clients.storage import local_path_of
from inference.contract import MANIFEST_FILE, JobManifest, StackJobSpec
from tests.batch.conftest import job_pid, process_gone, wait_until
from tests.fake_batch_api import FakeBatchApi


@pytest.fixture(params=["local", "cloud"])
def runner(request: pytest.FixtureRequest) -> BatchRunner:
    settings: Settings = request.getfixturevalue(f"{request.param}_settings")
    return runner_from_settings(settings)


@pytest.fixture
def sharded(spec: StackJobSpec) -> StackJobSpec:
    """A generate job of 3 shards (the stand-in reads no inputs)."""
    prompt_uri = spec.query_uri.replace("query", "prompt")
    fields = {**spec.model_dump(), "mode": "generate", "prompt_uri": prompt_uri, "split_column": "drug"}
    return StackJobSpec.model_validate({**fields, "shard_count": 3})


@pytest.fixture
def gate(standin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every task runs until this file exists, then succeeds."""
    monkeypatch.setenv("STACKFLOWS_TEST_GATE", str(tmp_path / "gate"))
    standin("gated")
    return tmp_path / "gate"


def final_status(runner: BatchRunner, job_id: str) -> JobStatus:
    return wait_until(lambda: (s := runner.status(job_id)).state.is_final and s, what=f"{job_id} to end")


def task_record(spec: StackJobSpec, index: int, event: str) -> dict | None:
    """What the stand-in's task ``index`` recorded when it started (``start``) or returned (``end``)."""
    path = local_path_of(spec.output_uri(f"task-{index}.{event}.json"))
    return json.loads(path.read_text()) if path.exists() else None


def started(spec: StackJobSpec, count: int) -> list[dict]:
    return [r for k in range(count) if (r := task_record(spec, k, "start"))]


def part_manifest(spec: StackJobSpec, shard: int) -> JobManifest | None:
    path = local_path_of(join(spec.shard_uri(shard), MANIFEST_FILE))
    return JobManifest.model_validate_json(path.read_text()) if path.exists() else None


def join(prefix: str, name: str) -> str:
    return f"{prefix.rstrip('/')}/{name}"


def test_a_three_task_job_runs_three_processes_each_with_its_own_task_index(runner, sharded, standin) -> None:
    standin("succeed")
    request = BatchJobRequest.for_stack_job(sharded, shards=[2, 0, 1])  # task k runs shards[k]

    runner.submit(request, "stack-tasks-a1")
    status = final_status(runner, "stack-tasks-a1")

    assert status.state is JobState.SUCCEEDED and status.exit_code == 0, status
    assert status.task_count == 3 and status.task_exit_codes == {0: 0, 1: 0, 2: 0} and status.failed_tasks == []
    records = started(sharded, 3)
    assert [(r["index"], r["count"], r["shard"]) for r in records] == [(0, 3, 2), (1, 3, 0), (2, 3, 1)]
    assert len({r["pid"] for r in records}) == 3  # three processes
    assert [part_manifest(sharded, shard).shard.index for shard in (0, 1, 2)] == [0, 1, 2]


def test_parallelism_one_runs_the_tasks_one_after_another(runner, sharded, standin) -> None:
    standin("succeed")
    runner.submit(BatchJobRequest.for_stack_job(sharded, shards=[0, 1, 2], parallelism=1), "stack-serial-a1")

    assert final_status(runner, "stack-serial-a1").state is JobState.SUCCEEDED

    spans = [(task_record(sharded, k, "start")["t_ns"], task_record(sharded, k, "end")["t_ns"]) for k in range(3)]
    assert sorted(spans) == spans  # in task order
    assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:], strict=False)), spans


def test_parallelism_bounds_the_tasks_running_at_once(runner, sharded, gate: Path) -> None:
    runner.submit(BatchJobRequest.for_stack_job(sharded, shards=[0, 1, 2], parallelism=2), "stack-bound-a1")

    wait_until(lambda: len(started(sharded, 3)) == 2, what="two tasks to start")
    # Tasks 0 and 1 wait on the gate and cannot end: task 2 has no slot until one of them does.
    assert [r["index"] for r in started(sharded, 3)] == [0, 1]
    assert runner.status("stack-bound-a1").state is JobState.RUNNING

    gate.touch()
    assert final_status(runner, "stack-bound-a1").state is JobState.SUCCEEDED
    first_end = min(task_record(sharded, k, "end")["t_ns"] for k in (0, 1))
    assert task_record(sharded, 2, "start")["t_ns"] >= first_end


def test_one_failed_task_fails_the_job_and_the_status_names_it(runner, sharded, standin, monkeypatch) -> None:
    standin("succeed")
    monkeypatch.setenv("STACKFLOWS_TEST_FAIL_TASK", "1")  # task 1 exits 3 with a traceback on stderr
    runner.submit(BatchJobRequest.for_stack_job(sharded, shards=[0, 1, 2]), "stack-onefail-a1")

    status = final_status(runner, "stack-onefail-a1")

    assert status.state is JobState.FAILED and status.exit_code == 3
    assert status.task_exit_codes == {0: 0, 1: 3, 2: 0} and status.failed_tasks == [1]
    assert "1 of 3 tasks failed: task 1 exit code 3" in status.describe()
    assert "--- task 1 (exit code 3) ---" in status.stderr_tail
    assert "stand-in failure: gene list does not match" in status.stderr_tail
    assert not status.preempted
    # the other tasks still ran and finished their parts: a retry needs only shard 1
    assert part_manifest(sharded, 0) is not None and part_manifest(sharded, 2) is not None
    assert part_manifest(sharded, 1) is None


def test_cancel_stops_every_running_task(runner, sharded, standin, request) -> None:
    standin("hang")
    runner.submit(BatchJobRequest.for_stack_job(sharded, shards=[0, 1, 2]), "stack-cancelall-a1")
    wait_until(lambda: len(started(sharded, 3)) == 3, what="all 3 tasks to start")
    pids = [r["pid"] for r in started(sharded, 3)]
    group = job_pid("stack-cancelall-a1", request)  # the local job's wrapper / the fake's task 0

    runner.cancel("stack-cancelall-a1")

    assert final_status(runner, "stack-cancelall-a1").state is JobState.CANCELLED
    for pid in [group, *pids]:
        wait_until(lambda pid=pid: process_gone(pid), what=f"process {pid} to end")


def test_local_status_reports_each_task_as_it_ends(local_settings, sharded, gate: Path, monkeypatch) -> None:
    """Task 0 fails at once while the others wait: the running job already says so."""
    monkeypatch.setenv("STACKFLOWS_TEST_FAIL_TASK", "0")
    runner = runner_from_settings(local_settings)
    runner.submit(BatchJobRequest.for_stack_job(sharded, shards=[0, 1, 2]), "stack-early-a1")

    running = wait_until(lambda: (s := runner.status("stack-early-a1")).task_exit_codes and s, what="task 0 to end")
    assert running.state is JobState.RUNNING and running.task_exit_codes == {0: 3}

    gate.touch()
    status = final_status(runner, "stack-early-a1")
    assert status.state is JobState.FAILED and status.failed_tasks == [0]
    stderr = (local_settings.data_dir / "jobs" / "stack-early-a1" / "stderr").read_text()
    assert "[task 0] ValueError: stand-in failure" in stderr  # each task's lines marked in the job's stderr


def test_fake_batch_fails_the_chosen_task_of_the_next_job(cloud_settings, fake_batch: FakeBatchApi, sharded, standin) -> None:
    standin("succeed")
    runner = runner_from_settings(cloud_settings)
    fake_batch.fail_task_of_next_job(2, exit_code=7)

    runner.submit(BatchJobRequest.for_stack_job(sharded, shards=[0, 1, 2]), "stack-inject-a1")
    status = final_status(runner, "stack-inject-a1")
    attempt2 = sharded.model_copy(update={"output_prefix": sharded.output_prefix + "-attempt2"})
    runner.submit(BatchJobRequest.for_stack_job(attempt2, shards=[2]), "stack-inject-a2")
    retry = final_status(runner, "stack-inject-a2")

    assert status.state is JobState.FAILED and status.exit_code == 7 and status.failed_tasks == [2]
    assert "injected by FakeBatchApi.fail_task_of_next_job" in status.stderr_tail  # saved by the task's job_wrapper
    assert part_manifest(sharded, 2) is None and task_record(sharded, 2, "start") is None  # it wrote nothing
    assert fake_batch.task_exit_codes("stack-inject-a1") == {0: 0, 1: 0, 2: 7}
    assert fake_batch.task_counts == {"stack-inject-a1": 3, "stack-inject-a2": 1}
    assert retry.state is JobState.SUCCEEDED  # only the next job's task fails


def test_fake_batch_preempts_every_task_of_a_preempted_job(cloud_settings, fake_batch: FakeBatchApi, sharded, standin) -> None:
    standin("succeed")
    runner = runner_from_settings(cloud_settings)
    fake_batch.preempt_first(1)

    runner.submit(BatchJobRequest.for_stack_job(sharded, shards=[0, 1, 2], parallelism=2), "stack-spot3-a1")
    status = final_status(runner, "stack-spot3-a1")

    assert status.state is JobState.FAILED and status.exit_code == 50001
    assert status.task_exit_codes == {0: 50001, 1: 50001, 2: 50001} and status.preempted
    assert "preempted" in status.message


def test_cloud_create_request_carries_the_task_count_and_parallelism(cloud_settings, fake_batch, sharded, standin) -> None:
    """What the client sent, as Batch receives it (camelCase JSON, int64 as strings)."""
    standin("succeed")
    runner = runner_from_settings(cloud_settings)
    runner.submit(BatchJobRequest.for_stack_job(sharded, shards=[0, 1, 2], parallelism=2), "stack-group-a1")
    whole = StackJobSpec.model_validate(
        {**sharded.model_dump(), "shard_count": 1, "output_prefix": sharded.output_prefix + "-whole"}
    )
    runner.submit(BatchJobRequest.for_stack_job(whole, parallelism=4), "stack-group1-a1")

    group = fake_batch.job_body("stack-group-a1")["taskGroups"][0]
    assert (group["taskCount"], group["parallelism"], group["taskCountPerNode"]) == ("3", "2", "1")  # a GPU each
    command = group["taskSpec"]["runnables"][0]["container"]["commands"]
    assert command[command.index("--stderr-tail-uri") + 1] == sharded.output_uri("job_stderr-task{task_index}.txt")
    assert command[command.index("--") + 1 :] == sharded.to_argv([0, 1, 2])

    one = fake_batch.job_body("stack-group1-a1")["taskGroups"][0]  # a 1-task job: as before tasks existed
    assert set(one) == {"taskSpec", "taskCount", "parallelism"} and (one["taskCount"], one["parallelism"]) == ("1", "1")
    one_command = one["taskSpec"]["runnables"][0]["container"]["commands"]
    assert one_command[: one_command.index("--")] == [
        "python", "-m", "clients.batch.job_wrapper", "--stderr-tail-uri", whole.output_uri("job_stderr.txt"),
    ]
    for job_id in ("stack-group-a1", "stack-group1-a1"):
        final_status(runner, job_id)


def test_the_wrapper_keeps_exactly_the_last_8_kib_of_stderr_however_it_arrives() -> None:
    from clients.batch.base import STDERR_TAIL_BYTES
    from clients.batch.job_wrapper import _Tail

    stream = b"".join(f"line {i}\n".encode() for i in range(4000))  # ~38 KiB
    for size in (1, 100, 65536):
        tail = _Tail()
        for start in range(0, len(stream), size):
            tail.add(stream[start : start + size])
        assert tail.bytes() == stream[-STDERR_TAIL_BYTES:]
        assert tail.kept - len(tail.pieces[0]) < STDERR_TAIL_BYTES  # no more is held than the tail needs
    short = _Tail()
    short.add(b"only this\n")
    assert short.bytes() == b"only this\n"
