"""Sharded jobs: shard tasks as parallel processes plus a merge give the plain job's outputs, bit for bit.

A shard is its own query set (inference.shards): shard i = numpy.array_split of the filtered query
cells, generated with the job's seed under every context. The plain job with the same shard_count
runs the shards one after another in one process, so both routes must write the same files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest

from inference.contract import (
    DE_FILE,
    GENE_MEANS_FILE,
    MANIFEST_FILE,
    PREDICTIONS_FILE,
    PROGRESS_FILE,
    SUMMARY_FILE,
    TASK_INDEX_ENV,
    JobManifest,
    JobProgress,
    MergeSpec,
    StackJobSpec,
)
from inference.merge import run_merge
from inference.shards import shard_bounds
from inference.stack_job import main, run_job
from tests.inference.conftest import MODEL_GENES, REPO, TinyInputs, read_json

SHARDS = 3


def _spec(tiny: TinyInputs, prefix: Path, **overrides) -> StackJobSpec:
    """Paired DE against a synthetic control, identity markers and a backtest: every grounding path."""
    fields = {"control_value": "d1", "cell_type_column": "cell_type", "query_cell_type": "T", "backtest": True,
                  "shard_count": SHARDS}
    return tiny.spec(prefix, **{**fields, **overrides})


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONWARNINGS": "ignore", **extra}


def _merge_argv(spec: StackJobSpec, parts: list[Path | str]) -> list[str]:
    return MergeSpec(spec=spec, parts=[str(p) for p in parts]).to_argv()[1:]


def assert_same_outputs(ours: Path, plain: Path) -> None:
    """The files a user reads are equal: X's arrays bit for bit, obs/var/uns, DE, gene means, summary."""
    with h5py.File(ours / PREDICTIONS_FILE) as a, h5py.File(plain / PREDICTIONS_FILE) as b:
        for key in ("data", "indices", "indptr"):
            x, y = a["X"][key][()], b["X"][key][()]
            assert x.dtype == y.dtype and np.array_equal(x, y), key
        assert {k: np.asarray(v).tolist() for k, v in a["X"].attrs.items()} == {
            k: np.asarray(v).tolist() for k, v in b["X"].attrs.items()
        }
    pa, pb = ad.read_h5ad(ours / PREDICTIONS_FILE), ad.read_h5ad(plain / PREDICTIONS_FILE)
    pd.testing.assert_frame_equal(pa.obs, pb.obs)
    pd.testing.assert_frame_equal(pa.var, pb.var)
    assert pa.uns["stack_job"] == pb.uns["stack_job"]
    for name in (DE_FILE, GENE_MEANS_FILE):
        pd.testing.assert_frame_equal(pd.read_parquet(ours / name), pd.read_parquet(plain / name))
    assert read_json(ours / SUMMARY_FILE) == read_json(plain / SUMMARY_FILE)


@pytest.fixture(scope="module")
def runs(tiny: TinyInputs, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The plain job (one process), and the same spec's three shard tasks as parallel processes."""
    root = tmp_path_factory.mktemp("shards")
    run_job(_spec(tiny, root / "plain"))
    spec = _spec(tiny, root / "tasks")
    procs = [
        subprocess.Popen([sys.executable, *spec.to_argv(list(range(SHARDS)))[1:]], cwd=REPO, env=_env(**{TASK_INDEX_ENV: str(k)}),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for k in range(SHARDS)
    ]
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out
    return {"root": root, "plain": root / "plain", "tasks": root / "tasks"}


def test_parallel_shard_tasks_and_merge_equal_the_plain_job_bit_for_bit(runs, tiny: TinyInputs) -> None:
    spec = _spec(tiny, runs["root"] / "merged")
    parts = [spec.model_copy(update={"output_prefix": str(runs["tasks"])}).shard_uri(i) for i in range(SHARDS)]
    merge = subprocess.run([sys.executable, *_merge_argv(spec, parts)], check=False, cwd=REPO, env=_env(),
                           capture_output=True, text=True, timeout=300)
    assert merge.returncode == 0, merge.stderr
    merged = runs["root"] / "merged"
    assert_same_outputs(merged, runs["plain"])

    manifest = JobManifest.model_validate(read_json(merged / MANIFEST_FILE))
    plain = JobManifest.model_validate(read_json(runs["plain"] / MANIFEST_FILE))
    assert manifest.merged_from == parts and [p.index for p in manifest.parts] == [0, 1, 2]
    assert all("compute_s" in p.timings_s for p in manifest.parts) and "load_model_s" not in manifest.timings_s
    assert manifest.device == "cpu" and manifest.gpu_seconds == 0.0  # the parts ran on the CPU here too
    assert manifest.outputs == plain.outputs  # the same bytes: predictions, DE, gene means, summary
    assert manifest.predictions_shape == plain.predictions_shape == (2 * 40, len(MODEL_GENES))
    assert (manifest.stack_config, manifest.model_trained) == (plain.stack_config, plain.model_trained)
    for name, sha in manifest.outputs.items():
        assert hashlib.sha256((merged / name).read_bytes()).hexdigest() == sha
    assert JobProgress.model_validate(read_json(merged / PROGRESS_FILE)).phase == "done"


def test_each_part_is_its_shard_and_vouches_for_it(runs, tiny: TinyInputs) -> None:
    bounds = shard_bounds(40, SHARDS)
    assert bounds == [(0, 14), (14, 27), (27, 40)]  # numpy.array_split's cut
    for i, (start, stop) in enumerate(bounds):
        part = runs["tasks"] / f"shard-{i}"
        assert sorted(p.name for p in part.iterdir()) == [MANIFEST_FILE, PREDICTIONS_FILE, PROGRESS_FILE]
        manifest = JobManifest.model_validate(read_json(part / MANIFEST_FILE))
        rows = stop - start
        assert manifest.shard.index == i and manifest.shard.count == SHARDS
        assert manifest.shard.query_cells == (start, stop)
        assert manifest.shard.blocks == {"d2": (0, rows), "d1": (rows, 2 * rows)}  # treated, then the control
        assert manifest.spec == _spec(tiny, runs["tasks"])
        progress = JobProgress.model_validate(read_json(part / PROGRESS_FILE))
        assert progress.phase == "done" and progress.chunks_done == progress.chunks_total > 0
        assert progress.cells_done == progress.cells_total == rows * 3 * 2
    plain = JobProgress.model_validate(read_json(runs["plain"] / PROGRESS_FILE))
    assert plain.cells_done == plain.cells_total == 40 * 3 * 2  # the plain job counts every shard


def test_a_shard_is_generated_as_a_query_set_of_its_own(runs, tiny: TinyInputs, tmp_path: Path) -> None:
    """The definition: shard 1's rows equal an unsharded job whose query is shard 1's cells alone."""
    start, stop = shard_bounds(40, SHARDS)[1]
    ad.read_h5ad(tiny.query)[start:stop].copy().write_h5ad(tmp_path / "shard1.h5ad")
    run_job(_spec(tiny, tmp_path / "alone", query_uri=str(tmp_path / "shard1.h5ad"), shard_count=1))
    alone = ad.read_h5ad(tmp_path / "alone" / PREDICTIONS_FILE)
    part = ad.read_h5ad(runs["tasks"] / "shard-1" / PREDICTIONS_FILE)
    assert np.array_equal(part.X.toarray(), alone.X.toarray())
    pd.testing.assert_frame_equal(part.obs, alone.obs)
    plain = ad.read_h5ad(runs["plain"] / PREDICTIONS_FILE)
    for value in ("d2", "d1"):  # and the plain job's rows of shard 1, in each context's block
        mine = plain[(plain.obs["split_value"] == value).to_numpy()][start:stop]
        assert np.array_equal(mine.X.toarray(), alone[(alone.obs["split_value"] == value).to_numpy()].X.toarray())


def test_a_retried_shard_in_another_prefix_merges_the_same(runs, tiny: TinyInputs, tmp_path: Path) -> None:
    """Attempt 2 reran shard 1 under its own prefix: parts [A/shard-0, B/shard-1, A/shard-2] merge alike."""
    retry = _spec(tiny, tmp_path / "attempt-2")
    run_job(retry, shard=1)
    parts = [runs["tasks"] / "shard-0", tmp_path / "attempt-2" / "shard-1", runs["tasks"] / "shard-2"]
    run_merge(MergeSpec(spec=_spec(tiny, tmp_path / "merged"), parts=[str(p) for p in parts]))
    assert_same_outputs(tmp_path / "merged", runs["plain"])


def _refused(spec: StackJobSpec, parts: list[Path | str], capsys) -> str:
    code = main(_merge_argv(spec, parts)[2:])
    assert code == 2
    assert not Path(spec.output_prefix).exists()  # nothing written at the destination, not even progress
    return capsys.readouterr().err


def test_the_merge_refuses_a_missing_damaged_or_foreign_part(runs, tiny: TinyInputs, tmp_path: Path, capsys) -> None:
    good = [runs["tasks"] / f"shard-{i}" for i in range(SHARDS)]
    spec = _spec(tiny, tmp_path / "dest")

    err = _refused(spec, [good[0], tmp_path / "never-ran" / "shard-1", good[2]], capsys)
    assert "part 1" in err and "no manifest.json" in err and "--shards 1" in err

    damaged = tmp_path / "damaged"
    shutil.copytree(good[2], damaged)
    with open(damaged / PREDICTIONS_FILE, "r+b") as fh:  # one byte flipped in the middle of the file
        fh.seek(fh.seek(0, 2) // 2)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0xFF]))
    err = _refused(spec, [good[0], good[1], damaged], capsys)
    assert "part 2" in err and "does not match its manifest" in err and "damaged" in err

    other = _spec(tiny, tmp_path / "other", seed=8)
    run_job(other, shard=1)
    err = _refused(spec, [good[0], tmp_path / "other" / "shard-1", good[2]], capsys)
    assert "part 1" in err and "another job" in err and "seed" in err

    err = _refused(spec, [good[1], good[0], good[2]], capsys)
    assert "part 0" in err and "shard order" in err


def test_more_shards_than_cells_merge_with_empty_parts(tiny: TinyInputs, tmp_path: Path) -> None:
    """Two query cells in three shards: shard 2 is an empty but valid part, and the merge is the plain job."""
    ad.read_h5ad(tiny.query)[:2].copy().write_h5ad(tmp_path / "two.h5ad")
    fields = {"query_uri": str(tmp_path / "two.h5ad"), "control_value": None, "backtest": False,  # query-as-control
              "query_cell_type": None, "cell_type_column": None}
    run_job(_spec(tiny, tmp_path / "plain", **fields))
    for i in range(SHARDS):
        run_job(_spec(tiny, tmp_path / "tasks", **fields), shard=i)
    empty = JobManifest.model_validate(read_json(tmp_path / "tasks" / "shard-2" / MANIFEST_FILE))
    assert empty.shard.query_cells == (2, 2) and empty.shard.blocks == {"d2": (0, 0), "d1": (0, 0)}
    assert empty.predictions_shape == (0, len(MODEL_GENES)) and "load_model_s" not in empty.timings_s
    assert ad.read_h5ad(tmp_path / "tasks" / "shard-2" / PREDICTIONS_FILE).shape == (0, len(MODEL_GENES))
    parts = [str(tmp_path / "tasks" / f"shard-{i}") for i in range(SHARDS)]
    run_merge(MergeSpec(spec=_spec(tiny, tmp_path / "merged", **fields), parts=parts))
    assert_same_outputs(tmp_path / "merged", tmp_path / "plain")


def test_a_task_outside_its_shard_list_exits_2(tiny: TinyInputs, tmp_path: Path, monkeypatch, capsys) -> None:
    spec = _spec(tiny, tmp_path / "out")
    monkeypatch.setenv(TASK_INDEX_ENV, "2")
    assert main(["--spec-json", spec.model_dump_json(), "--shards", "0,1"]) == 2
    assert f"{TASK_INDEX_ENV}=2" in capsys.readouterr().err
    monkeypatch.setenv(TASK_INDEX_ENV, "0")
    assert main(["--spec-json", spec.model_dump_json(), "--shards", "5"]) == 2
    assert "shard_count is 3" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_embed_job_is_never_sharded(tiny: TinyInputs, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="embed job runs as one task"):
        tiny.spec(tmp_path, mode="embed", checkpoint_uri=str(tiny.embed_ckpt), prompt_uri=None, split_column=None,
                  shard_count=2)


def test_merge_spec_round_trips_through_its_argv(tiny: TinyInputs, tmp_path: Path) -> None:
    merge = MergeSpec(spec=_spec(tiny, tmp_path / "m"), parts=["a", "b", "c"])
    argv = merge.to_argv()
    assert argv[:4] == ["python", "-m", "inference.stack_job", "--merge-json"]
    assert MergeSpec.model_validate(json.loads(argv[4])) == merge


def test_the_merge_never_imports_prefect() -> None:
    code = (
        "import sys, inference.merge, inference.shards;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'prefect'); print(bad); sys.exit(bool(bad))"
    )
    proc = subprocess.run([sys.executable, "-c", code], check=False, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_shard_bounds_cut_as_numpy_array_split() -> None:
    for n in range(25):
        for count in range(1, 9):
            expected = [(int(a[0]), int(a[-1]) + 1) if a.size else None for a in np.array_split(np.arange(n), count)]
            bounds = shard_bounds(n, count)
            assert [b if b[1] > b[0] else None for b in bounds] == expected
            assert bounds[0][0] == 0 and bounds[-1][1] == n  # contiguous, covering every cell
            assert all(a[1] == b[0] for a, b in pairwise(bounds))
