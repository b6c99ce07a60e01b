"""The merge of a sharded job: ``python -m inference.stack_job --merge-json '<MergeSpec JSON>'``.

Each task of a sharded job wrote one part (its query rows generated under every context, and a
manifest that vouches for them by sha256) under a prefix of its own, perhaps of different attempts.
The merge checks every part before it writes anything, reads the inputs as the plain job does
(the query-as-control reference, the query means, markers and backtest need them), then writes
under ``spec.output_prefix`` what a plain job with the same spec writes: one predictions.h5ad,
copied one part's block of one context at a time (context-major, shards in order), and the
grounding the plain job runs on the same code path. It loads no model and touches no GPU: it
runs on a small machine, and its manifest keeps each part's device and timings in ``parts``.
"""

from __future__ import annotations

import logging
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from clients.storage import ObjectNotFoundError, store_for
from clients.storage.digests import digest_file
from inference.contract import (
    MANIFEST_FILE,
    PREDICTIONS_FILE,
    JobManifest,
    MergeSpec,
    PartRecord,
)
from inference.data import InputError
from inference.outputs import PredictionsWriter, read_rows
from inference.preload import Preload
from inference.shards import check_coverage, check_part
from inference.stack_job import (
    JobInputs,
    StackJob,
    predictions_annotations,
    preload_for,
    refuse_used_prefix,
    run_reporting_failure,
)

log = logging.getLogger("inference.merge")
MODEL_FIELDS = ("stack_config", "model_trained", "model_parameters")


@dataclass(frozen=True)
class Part:
    """One shard's part, checked: its manifest, its predictions as a local file and their obs."""

    index: int
    uri: str
    manifest: JobManifest
    predictions: Path
    obs: pd.DataFrame | None = None

    @property
    def name(self) -> str:
        return part_name(self.index, self.uri)

    @property
    def fix(self) -> str:
        return part_fix(self.index)


def part_name(index: int, uri: str) -> str:
    return f"part {index} ({uri})"


def part_fix(index: int) -> str:
    return f"rerun shard {index} of this spec (--shards {index}) and pass the prefix it writes"


class MergeJob(StackJob):
    """Join the parts of ``merge`` into the outputs of a plain job with the same spec."""

    def __init__(self, merge: MergeSpec, workdir: Path, preload: Preload | None = None) -> None:
        super().__init__(merge.spec, workdir, preload)
        self.merge = merge

    def run(self) -> JobManifest:
        t0 = time.perf_counter()
        parts = [self.fetch_part(i, uri) for i, uri in enumerate(self.merge.parts)]
        model = check_same_model(parts)
        inputs = self.read_inputs(checkpoint=False)
        parts = [self.check_rows(part, inputs) for part in parts]
        self._timed("read_inputs_s", t0)

        t1 = time.perf_counter()  # every part is sound: from here on the merge writes
        local = self.workdir / PREDICTIONS_FILE
        shape, blocks = self.join_predictions(parts, inputs, local, trained=model["model_trained"])
        self._timed("merge_predictions_s", t1)
        if self.preload is not None:
            self.preload.join()  # the grounding's imports (scipy.stats, pdex, ...)
        summary, de, means = self.ground(local, blocks, inputs, model["model_trained"])

        t3 = time.perf_counter()
        self.progress.update("writing", message="writing outputs", force=True)
        outputs = self.write_outputs(local, summary, de, means)
        self._timed("write_s", t3)
        self.timings["total_s"] = round(time.perf_counter() - t0, 3)
        records = [
            PartRecord(index=p.index, uri=p.uri, device=p.manifest.device, timings_s=p.manifest.timings_s,
                       peak_memory_mb=p.manifest.peak_memory_mb)
            for p in parts
        ]
        return self.write_manifest(
            None, device="cpu", peak=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, outputs=outputs, shape=shape,
            merged_from=list(self.merge.parts), parts=records, **model,
        )

    def fetch_part(self, index: int, uri: str) -> Part:
        """Part ``index``'s manifest, checked against the spec, and its outputs, checked against the manifest."""
        prefix = uri.rstrip("/")
        store = store_for(prefix)
        name, fix = part_name(index, prefix), part_fix(index)
        try:
            raw = store.get_bytes(f"{prefix}/{MANIFEST_FILE}")
        except ObjectNotFoundError:
            raise InputError(
                f"{name}: has no {MANIFEST_FILE}, so the part is not complete (its task failed, is still "
                f"running, or wrote elsewhere); {fix}"
            ) from None
        try:
            manifest = JobManifest.model_validate_json(raw)
        except ValueError as exc:
            raise InputError(f"{name}: its {MANIFEST_FILE} is not a job manifest ({exc}); {fix}") from None
        check_part(manifest, self.spec, index, name=name)
        if PREDICTIONS_FILE not in manifest.outputs:
            raise InputError(f"{name}: its manifest lists no {PREDICTIONS_FILE}; {fix}")
        local: dict[str, Path] = {}
        for output, sha in manifest.outputs.items():
            object_uri = f"{prefix}/{output}"
            path = store.local_path(object_uri)
            try:
                if path is None:
                    path = store.get_file(object_uri, self.workdir / f"part-{index}" / output)
                elif not path.is_file():
                    raise ObjectNotFoundError(object_uri)
            except ObjectNotFoundError:
                raise InputError(f"{name}: {output}, which its manifest lists, is missing; {fix}") from None
            actual = digest_file(path).sha256
            if actual != sha:
                raise InputError(
                    f"{name}: {output} does not match its manifest (sha256 {actual[:16]}..., the manifest says "
                    f"{sha[:16]}...): the part is damaged; {fix}"
                )
            local[output] = path
        return Part(index, prefix, manifest, local[PREDICTIONS_FILE])

    def check_rows(self, part: Part, inputs: JobInputs) -> Part:
        """The part holds its shard's rows of these very inputs, every context, in the job's layout."""
        contexts, genes = list(inputs.prompts), inputs.genes
        shard = part.manifest.shard
        check_coverage(shard, inputs.query.n_cells, contexts, name=part.name, index=part.index)
        start, stop = shard.query_cells
        expected = (len(contexts) * (stop - start), len(genes))
        if tuple(part.manifest.predictions_shape) != expected:
            raise InputError(f"{part.name}: predictions of shape {part.manifest.predictions_shape}, not {expected}; {part.fix}")
        obs = read_obs(part.predictions)
        ids = [str(c) for c in inputs.query.obs.index[start:stop]]
        for value in contexts:
            block = obs.iloc[slice(*shard.blocks[value])]
            if list(block["query_cell"].astype(str)) != ids or not (block["split_value"].astype(str) == value).all():
                raise InputError(
                    f"{part.name}: the rows of context {value!r} are not query cells {start}..{stop - 1} of the "
                    f"filtered query (were the inputs changed?); {part.fix}"
                )
        return Part(part.index, part.uri, part.manifest, part.predictions, obs)

    def join_predictions(
        self, parts: list[Part], inputs: JobInputs, local: Path, *, trained: bool
    ) -> tuple[tuple[int, int], dict[str, tuple[int, int]]]:
        """One predictions.h5ad: each context's block of each part in turn, one block in memory at a time."""
        contexts = list(inputs.prompts)
        total = len(contexts) * len(parts)
        self.progress.update(
            "writing", chunks_done=0, chunks_total=total, cells_done=0, cells_total=inputs.query.n_cells * len(contexts),
            message=f"joining {len(parts)} part(s) x {len(contexts)} context(s)", force=True,
        )
        blocks: dict[str, tuple[int, int]] = {}
        logits: dict[str, np.ndarray] = {}
        writer = PredictionsWriter(local, len(inputs.genes))
        try:
            for value in contexts:
                first, pieces = writer.rows, []
                for part in parts:
                    start, stop = part.manifest.shard.blocks[value]
                    writer.append(read_rows(part.predictions, start, stop))
                    pieces.append(part.obs["gen_logit"].to_numpy()[start:stop])
                    self.progress.update(
                        "writing", chunks_done=self.progress.last.chunks_done + 1, cells_done=writer.rows,
                        message=f"context {value!r}: part {part.index + 1}/{len(parts)} joined",
                    )
                blocks[value] = (first, writer.rows)
                logits[value] = np.concatenate(pieces)
            writer.finish(*predictions_annotations(self.spec, inputs, logits, trained))
        finally:
            writer.close()
        return (writer.rows, len(inputs.genes)), blocks


def check_same_model(parts: list[Part]) -> dict:
    """The model fields every part reports (one checkpoint made them all), for the merged manifest."""
    first = {k: getattr(parts[0].manifest, k) for k in MODEL_FIELDS}
    for part in parts[1:]:
        if {k: getattr(part.manifest, k) for k in MODEL_FIELDS} != first:
            raise InputError(
                f"{part.name}: made by another model than part 0 (stack_config, model_trained or model_parameters "
                f"differ: was the checkpoint replaced?); {part.fix}"
            )
    return first


def read_obs(path: Path) -> pd.DataFrame:
    """A predictions file's obs alone (query cells x contexts rows, a few columns), not its X."""
    from anndata.io import read_elem

    with h5py.File(path, "r") as f:
        return read_elem(f["obs"])


def run_merge(merge: MergeSpec, preload: Preload | None = None) -> JobManifest:
    """Merge the parts; raises InputError (a part or the destination refused, nothing written there)
    or the failure (progress says failed)."""
    refuse_used_prefix(merge.spec.output_prefix)
    with tempfile.TemporaryDirectory(prefix="stack-merge-") as tmp:
        job = MergeJob(merge, Path(tmp), preload)
        return run_reporting_failure(job, job.run)


def main_merge(raw: str) -> int:
    """``--merge-json``: exit 0 done, 2 a refused part, spec or destination, 1 any other failure."""
    try:
        merge = MergeSpec.model_validate_json(raw)
    except ValueError as exc:
        print(f"error: the merge spec is invalid:\n{exc}", file=sys.stderr)
        return 2
    preload = preload_for(merge.spec, model=False)
    try:
        manifest = run_merge(merge, preload)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log.info("done: merged %d part(s) into predictions %s in %.1f s", len(merge.parts), manifest.predictions_shape,
             manifest.timings_s["total_s"])
    return 0
