"""The GPU job: ``python -m inference.stack_job --spec-json '<StackJobSpec JSON>'``.

One run reads its inputs from storage URIs, checks them, runs STACK (in-context generation or
embeddings) and writes under ``output_prefix``::

    progress.json     rewritten as chunks finish (see inference.progress)
    predictions.h5ad  generate: query cells x model genes per context (the treated ones, then the
                      control when the spec names one), obs carried over + query_cell, split_value;
                      streamed one context at a time (inference.outputs), lzf-compressed
                      embed:    query cells x embedding dimensions (also in obsm["X_stack"])
    de.parquet        generate: DE per treated context against its reference (inference.de)
    gene_means.parquet generate: per model gene, mean log1p-CPM of the query input and of each
                      context's predictions (inference.gene_means): what the report plots
    summary.json      PredictionSummary, for the agent and the grounding: DE in brief, the query
                      type's markers (inference.markers), the backtest (inference.backtest)
    manifest.json     JobManifest, written last: its presence means the outputs are complete

Memory follows the batch and the sparse inputs, never query cells x genes: inputs stay CSR on the
host, windows are made dense on the device per batch, each context's predictions are appended to
the file as it finishes, and DE/backtest read the arms back from it one context at a time.

Sharded jobs (``StackJobSpec.shard_count`` > 1; inference.shards says what a shard is):

    --spec-json S              every shard one after another in this process, rows appended
                               context-major, shards in order within a context; outputs as above
    --spec-json S --shards L   a Batch task: task k (``BATCH_TASK_INDEX``) runs shard L[k] and writes
                               its part under ``S.shard_uri(i)``: progress.json, predictions.h5ad (its
                               rows), manifest.json last (``shard``: its rows and blocks)
    --merge-json M             (inference.merge) checks every part, then writes what the plain job
                               with the same spec writes, with no model and no GPU

Start-up: arc-stack, scvi and lightning (seconds to import) are imported on a background thread
that ``main`` starts once the spec is parsed (inference.preload), overlapping the reading of the
inputs; pdex, cell-eval and scanpy only on the paths that use them.

Exit status: 0 done, 2 bad input or an output prefix already in use (nothing computed), 1 any other
failure (progress.json then says ``failed`` and why). Never imports Prefect.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from clients.storage import ObjectNotFoundError, local_path_of, scheme_of, store_for
from inference import backtest as backtest_mod
from inference import checkpoint as ckpt_mod
from inference import de as de_mod
from inference import gene_means as means_mod
from inference import precision as precision_mod
from inference.contract import (
    DE_COLUMNS,
    DE_FILE,
    GENE_MEANS_FILE,
    MANIFEST_FILE,
    PREDICTIONS_FILE,
    SUMMARY_FILE,
    TASK_INDEX_ENV,
    JobManifest,
    PredictionSummary,
    ShardInfo,
    StackJobSpec,
)
from inference.data import (
    CountMatrix,
    InputError,
    align_counts,
    apply_obs_filter,
    check_gene_list,
    gene_positions,
    gene_symbols,
    matrix_at,
    obs_strings,
    read_h5ad,
    select_split_values,
    var_of,
)
from inference.embedding import chunk_cells, embed_cells
from inference.gene_list import GeneListError, read_gene_list
from inference.generation import chunks_in_step, generate_split, plan_steps
from inference.markers import identity_markers
from inference.outputs import PredictionsWriter, read_rows
from inference.preload import HEAVY_MODULES, Preload, modules_for
from inference.progress import ProgressWriter
from inference.shards import parse_shards, shard_bounds, task_shard
from inference.summary import split_summary

log = logging.getLogger("inference.stack_job")

class OutputExistsError(InputError):
    """The output prefix already holds objects; a job never writes into a used location."""


def refuse_used_prefix(prefix: str) -> None:
    prefix = prefix.rstrip("/")
    if scheme_of(prefix) == "file":  # the local store lists file:// URIs, whatever form was given
        prefix = local_path_of(prefix).as_uri()
    used = [u for u in store_for(prefix).list(prefix) if u == prefix or u.startswith(prefix + "/")]
    if used:
        raise OutputExistsError(
            f"output_prefix {prefix} already holds {len(used)} object(s) (e.g. {used[0]}); "
            "a job never writes into a used location: pick a new output_prefix"
        )


def fetch(uri: str, workdir: Path, *, field: str, filename: str) -> Path:
    """A local file for ``uri``: the file itself for file:// URIs, else a verified download."""
    store = store_for(uri)
    local = store.local_path(uri)
    if local is not None:
        if not local.is_file():
            raise InputError(f"{field}: {uri} does not exist; stage the input first")
        return local
    try:
        return store.get_file(uri, workdir / filename)
    except ObjectNotFoundError as exc:
        raise InputError(f"{field}: {uri} does not exist; stage the input first") from exc


def resolve_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' was requested but this machine has no usable GPU; use 'auto' or 'cpu'")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def peak_memory_mb(device: torch.device) -> float:
    """GPU: peak allocated by torch; CPU: the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def read_cells(
    path: Path, obs_filter, genes: list[str], spec: StackJobSpec, *, name: str
) -> tuple[ad.AnnData, CountMatrix]:
    """The query: its filtered cells, and their counts from the matrix the spec names."""
    adata = apply_obs_filter(read_h5ad(str(path), name=name), obs_filter, name=name)
    return adata, align_counts(adata, genes, name=name, **count_options(spec, "query"))


def count_options(spec: StackJobSpec, side: Literal["prompt", "query"]) -> dict:
    """What :func:`align_counts` needs from the spec for one input: the matrix validation chose."""
    return {
        "matrix": getattr(spec, f"{side}_matrix"),
        "matrix_field": f"{side}_matrix",
        "gene_name_column": spec.gene_name_column,
        "counts_required": spec.counts_required,
    }


@dataclass(frozen=True)
class JobInputs:
    """What a run reads and checks before it computes: the model's files and the cells."""

    genes: list[str]
    gene_path: Path
    query_adata: ad.AnnData  # the filtered query cells as read (their obs go into the predictions)
    query: CountMatrix
    prompts: dict[str, CountMatrix]  # per context, in generation order (the treated ones, then the control)
    held_out: dict[str, CountMatrix]  # backtest: real cells of the query type per treated context
    checkpoint: Path | None = None  # None in a merge, which loads no model
    info: ckpt_mod.CheckpointInfo | None = None

    def rows(self, start: int, stop: int) -> JobInputs:
        """The same inputs with only query rows ``start:stop`` (one shard's query set)."""
        q = self.query
        query = CountMatrix(counts=q.counts[start:stop], obs=q.obs.iloc[start:stop].copy(),
                            genes_present=q.genes_present, matrix=q.matrix)
        return replace(self, query_adata=self.query_adata[start:stop], query=query)


class StackJob:
    """One job run, made of the pieces the three modes compose: read the inputs, load the model,
    generate, ground (DE, gene means, markers, backtest), write. ``run()`` is the plain job,
    ``run_shard(i)`` one shard's part, ``inference.merge.MergeJob`` the merge of the parts.

    ``output_prefix`` is where this run writes (a shard: its part's prefix); the spec's by default.
    """

    def __init__(
        self, spec: StackJobSpec, workdir: Path, preload: Preload | None = None, *, output_prefix: str | None = None
    ) -> None:
        self.spec = spec
        self.output_prefix = (output_prefix or spec.output_prefix).rstrip("/")
        self.preload = preload
        self.workdir = workdir
        self.progress = ProgressWriter(spec.model_copy(update={"output_prefix": self.output_prefix}))
        self.timings: dict[str, float] = {}
        self.started = datetime.now(UTC)

    def uri(self, name: str) -> str:
        return f"{self.output_prefix}/{name}"

    def _timed(self, key: str, start: float) -> None:
        self.timings[key] = round(time.perf_counter() - start, 3)

    def run(self) -> JobManifest:
        """The plain job: every shard one after another in this process, then the grounding."""
        spec = self.spec
        t0 = time.perf_counter()
        self.progress.update("loading", message="reading inputs", force=True)
        inputs = self.read_inputs()
        device = resolve_device(spec.device)
        self._timed("read_inputs_s", t0)
        model = self.load_model(inputs, device)

        t2 = time.perf_counter()
        de = means = None
        local = self.workdir / PREDICTIONS_FILE
        if spec.mode == "generate":
            bounds = shard_bounds(inputs.query.n_cells, spec.shard_count)
            shape, blocks = self.generate_predictions(model, inputs, bounds, device, local)
        else:
            shape, summary = self._embed(model, inputs, local)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self._timed("compute_s", t2)
        peak = peak_memory_mb(device)
        if spec.mode == "generate":
            del model
            summary, de, means = self.ground(local, blocks, inputs, inputs.info.trained)

        t3 = time.perf_counter()
        self.progress.update("writing", message="writing outputs", force=True)
        outputs = self.write_outputs(local, summary, de, means)
        self._timed("write_s", t3)
        self.timings["total_s"] = round(time.perf_counter() - t0, 3)
        return self.write_manifest(
            inputs.info, device=_device_name(device), peak=peak, outputs=outputs, shape=shape
        )

    def run_shard(self, index: int) -> JobManifest:
        """One shard's part: its query rows generated under every context, written under this run's
        prefix with a manifest that says which rows and blocks it holds (no grounding: the merge's)."""
        spec = self.spec
        if spec.mode != "generate":
            raise InputError(f"--shards runs one shard of a generate job; this spec's mode is {spec.mode!r}")
        t0 = time.perf_counter()
        self.progress.update("loading", message=f"reading inputs (shard {index} of {spec.shard_count})", force=True)
        inputs = self.read_inputs()
        start, stop = shard_bounds(inputs.query.n_cells, spec.shard_count)[index]
        inputs = inputs.rows(start, stop)
        device = resolve_device(spec.device)
        self._timed("read_inputs_s", t0)
        model = self.load_model(inputs, device) if stop > start else None  # an empty shard needs no model

        t2 = time.perf_counter()
        local = self.workdir / PREDICTIONS_FILE
        shape, blocks = self.generate_predictions(model, inputs, [(0, stop - start)], device, local)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self._timed("compute_s", t2)
        peak = peak_memory_mb(device)
        del model

        t3 = time.perf_counter()
        self.progress.update("writing", message="writing the part", force=True)
        outputs = self.write_outputs(local)
        self._timed("write_s", t3)
        self.timings["total_s"] = round(time.perf_counter() - t0, 3)
        shard = ShardInfo(index=index, count=spec.shard_count, query_cells=(start, stop), blocks=blocks)
        return self.write_manifest(
            inputs.info, device=_device_name(device), peak=peak, outputs=outputs, shape=shape, shard=shard
        )

    def read_inputs(self, *, checkpoint: bool = True) -> JobInputs:
        """Fetch and check the gene list, the checkpoint (unless ``checkpoint`` is false: a merge
        loads no model) and the cells; every problem is an InputError before anything is computed."""
        spec = self.spec
        suffix = Path(spec.gene_list_uri).suffix.lower()  # the format (.json, .txt, else pickle) goes by suffix
        gene_path = fetch(spec.gene_list_uri, self.workdir, field="gene_list_uri", filename=f"genes{suffix}")
        try:
            genes = check_gene_list(read_gene_list(gene_path), source=spec.gene_list_uri)
        except GeneListError as exc:
            raise InputError(f"gene_list_uri {spec.gene_list_uri}: {exc.problem}; {exc.fix}") from None
        ckpt_path = info = None
        if checkpoint:
            ckpt_path = fetch(spec.checkpoint_uri, self.workdir, field="checkpoint_uri", filename="model.ckpt")
            if ckpt_path.suffix != ".ckpt":  # arc-stack picks the format by suffix: link, never copy or rename
                (self.workdir / "model.ckpt").symlink_to(ckpt_path.resolve())
                ckpt_path = self.workdir / "model.ckpt"
            info = ckpt_mod.inspect_checkpoint(ckpt_path, name=f"checkpoint {spec.checkpoint_uri}")
            ckpt_mod.check_class_for_mode(info, spec.mode, name=f"checkpoint {spec.checkpoint_uri}")
            ckpt_mod.check_gene_count(info, len(genes), name=f"checkpoint {spec.checkpoint_uri}")
        query_path = fetch(spec.query_uri, self.workdir, field="query_uri", filename="query.h5ad")
        query_adata, query = read_cells(query_path, spec.query_obs_filter, genes, spec, name=f"query {spec.query_uri}")
        prompts: dict[str, CountMatrix] = {}
        held_out: dict[str, CountMatrix] = {}
        if spec.mode == "generate":
            prompt_path = fetch(spec.prompt_uri, self.workdir, field="prompt_uri", filename="prompt.h5ad")
            name = f"prompt {spec.prompt_uri}"
            prompt_adata = apply_obs_filter(read_h5ad(str(prompt_path), name=name), spec.prompt_obs_filter, name=name)
            splits = select_split_values(prompt_adata.obs, spec.split_column, spec.split_values, name=name)
            column = obs_strings(prompt_adata.obs[spec.split_column])
            check_control(spec, column, splits, name=name)
            check_cell_types(spec, query_adata.obs, prompt_adata.obs, name=name)
            options = count_options(spec, "prompt")
            held = held_out_mask(spec, prompt_adata.obs, column)
            for value in spec.contexts(splits):
                in_context = (column == value).to_numpy()
                shown = in_context & ~held
                if not shown.any():
                    raise InputError(
                        f"{name}: context {value!r} has no prompt cells left once its {spec.query_cell_type!r} "
                        f"cells are held out for the backtest; set backtest=false or add other cells"
                    )
                prompts[value] = align_counts(prompt_adata[shown], genes, name=name, **options)
                if (in_context & held).any():
                    held_out[value] = align_counts(prompt_adata[in_context & held], genes, name=name, **options)
        return JobInputs(genes, gene_path, query_adata, query, prompts, held_out, ckpt_path, info)

    def load_model(self, inputs: JobInputs, device: torch.device):
        t1 = time.perf_counter()
        self.progress.update("loading", message=f"loading the model on {device}", force=True)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        if self.preload is not None:
            self.preload.join()  # an import that failed raises here, with its own message
        model = ckpt_mod.load_model(inputs.checkpoint, self.spec.mode, device)
        precision_mod.configure(model, self.spec.precision)
        self._timed("load_model_s", t1)
        return model

    def generate_predictions(
        self, model, inputs: JobInputs, bounds: list[tuple[int, int]], device: torch.device, local: Path
    ) -> tuple[tuple[int, int], dict[str, tuple[int, int]]]:
        """Every context's predictions, appended to ``local`` as each shard of it finishes (context-major,
        shards in order: the layout a merge writes); returns the shape and each context's row block.

        Each of ``bounds`` (query rows [start, stop)) is generated as its own query set with the job's
        seed; one bound over all rows is arc-stack's generate() itself.
        """
        spec, query, genes = self.spec, inputs.query, inputs.genes
        n_query, n_contexts = query.n_cells, len(inputs.prompts)
        n_cells = int(model.n_cells) if model is not None else 1
        per_context = sum(
            chunks_in_step(p, spec.batch_size, spec.chunk_size)
            for start, stop in bounds for p in plan_steps(spec.num_steps, n_cells, stop - start)
        ) if n_query else 0
        shards = f", {len(bounds)} shards" if len(bounds) > 1 else ""
        self.progress.update(
            "generating", chunks_total=per_context * n_contexts, cells_total=n_query * spec.num_steps * n_contexts,
            message=f"{n_contexts} context(s), {n_query} query cells{shards}, {spec.num_steps} steps "
            "(cells counts query cell-steps)", force=True,
        )
        # arc-stack matches model genes to upper-cased input names without upper-casing the model's
        # own symbols: a gene not written in upper case never receives input. Reproduce that.
        upper = np.array([g == g.upper() for g in genes])
        gene_input_mask = None if upper.all() else torch.from_numpy(upper.astype(np.float32)).to(device)
        logits: dict[str, np.ndarray] = {}
        blocks: dict[str, tuple[int, int]] = {}
        chunks_done = 0
        writing = 0.0
        writer = PredictionsWriter(local, len(genes))
        try:
            for k, (value, prompt) in enumerate(inputs.prompts.items()):
                first, parts = writer.rows, []
                for start, stop in bounds:
                    if stop == start:  # more shards than cells: this one has none
                        parts.append(np.zeros(0, dtype=np.float32))
                        continue
                    cells_before = (k * n_query + start) * spec.num_steps
                    rows = stop - start

                    def on_chunk(step: int, done: int, value=value, cells_before=cells_before, k=k, rows=rows) -> None:
                        nonlocal chunks_done
                        chunks_done += 1
                        self.progress.update(
                            "generating", chunks_done=chunks_done,
                            cells_done=cells_before + (step - 1) * rows + done,
                            message=f"context {value!r} ({k + 1}/{n_contexts}), step {step}/{spec.num_steps}",
                        )

                    counts, logit = generate_split(
                        model, prompt.counts, query.counts if rows == n_query else query.counts[start:stop],
                        num_steps=spec.num_steps, seed=spec.seed, batch_size=spec.batch_size,
                        chunk_size=spec.chunk_size, precision=spec.precision, device=device,
                        gene_input_mask=gene_input_mask, on_chunk=on_chunk,
                    )
                    t = time.perf_counter()
                    writer.append(counts)
                    writing += time.perf_counter() - t
                    parts.append(logit)
                    del counts
                blocks[value] = (first, writer.rows)
                logits[value] = parts[0] if len(parts) == 1 else np.concatenate(parts)
                log.info("context %r done (%d/%d)", value, k + 1, n_contexts)
            t = time.perf_counter()
            writer.finish(*predictions_annotations(spec, inputs, logits, inputs.info.trained))
            self.timings["write_predictions_s"] = round(writing + time.perf_counter() - t, 3)
        finally:
            writer.close()
        return (writer.rows, len(genes)), blocks

    def ground(
        self, predictions: Path, blocks: dict[str, tuple[int, int]], inputs: JobInputs, trained: bool,
    ) -> tuple[PredictionSummary, pd.DataFrame, pd.DataFrame]:
        """DE per treated context, the gene means, the query type's markers and the backtest; each timed.

        The arms are read back from the written predictions one context at a time (the control
        once): memory is two arms' non-zeros, never every context at once. Each context's gene
        means are taken from its arm as it is first read.
        """
        spec, query, genes = self.spec, inputs.query, inputs.genes
        control = spec.control_value
        shared = np.flatnonzero(query.genes_present)  # the background: genes the model and the query input have
        tested = [genes[i] for i in shared]
        ids = [str(c) for c in query.obs.index]  # the query_cell of every arm's rows, in order
        treated = [v for v in blocks if v != control]
        query_shared = query.counts[:, shared]
        context_means: dict[str, np.ndarray] = {}

        def arm(value: str):
            rows = read_rows(predictions, *blocks[value])
            if value not in context_means:
                context_means[value] = means_mod.mean_log1p_cpm(rows)
            return rows

        control_arm = arm(control) if control is not None else None

        t = time.perf_counter()
        self.progress.update("writing", message=f"differential expression of {len(treated)} context(s)", force=True)
        frames, splits = [], []
        for value in treated:
            treated_arm = arm(value)
            if control is not None:
                frame = de_mod.paired_de(
                    treated_arm[:, shared], control_arm[:, shared], tested, split_value=value,
                    reference_value=control, query_cells_treated=ids, query_cells_control=ids,
                )
            else:
                frame = de_mod.unpaired_de(treated_arm[:, shared], query_shared, tested, split_value=value)
            del treated_arm
            frames.append(frame)
            splits.append(split_summary(frame, cells=query.n_cells, reference_value=control))
        de = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=DE_COLUMNS)
        self._timed("de_s", t)
        means = means_mod.table(
            [means_mod.frame("query_input", None, genes, query_input_means(inputs.query_adata, query, genes, spec))]
            + [means_mod.frame("prediction", v, genes, context_means[v]) for v in blocks]
        )

        identity = backtest = None
        if spec.query_cell_type is not None:
            t = time.perf_counter()
            identity = self._markers(inputs)
            self._timed("markers_s", t)
        if spec.backtest:
            t = time.perf_counter()
            self.progress.update("writing", message="backtest against held-out real cells (cell-eval)", force=True)
            held_out = inputs.held_out
            kept = shared[np.all([m.genes_present[shared] for m in held_out.values()], axis=0)] if held_out else shared
            backtest = backtest_mod.score_backtest(
                real_control=query.counts[:, kept],
                held_out={v: m.counts[:, kept] for v, m in held_out.items()},
                pred_control=control_arm[:, kept] if control is not None else query.counts[:, kept],
                predicted={v: arm(v)[:, kept] for v in treated if v in held_out},
                genes=[genes[i] for i in kept], cell_type_column=spec.cell_type_column,
                cell_type=spec.query_cell_type, control_label=control, workdir=self.workdir,
            )
            self._timed("backtest_s", t)
        summary = PredictionSummary(
            mode="generate", model_trained=trained, query_cells=query.n_cells, genes=len(genes),
            control_value=control, splits=splits, identity=identity, backtest=backtest,
        )
        return summary, de, means

    def _markers(self, inputs: JobInputs):
        """Identity markers from the input cells (query and every prompt cell read, held-out ones too)."""
        spec, genes = self.spec, inputs.genes
        parts = [inputs.query, *inputs.prompts.values(), *inputs.held_out.values()]
        shared = np.flatnonzero(np.all([m.genes_present for m in parts], axis=0))
        if shared.size == 0:
            log.info("identity markers not computed: the query and prompt inputs share no model gene")
            return None
        counts = sp.vstack([sp.csr_matrix(m.counts[:, shared]) for m in parts], format="csr")
        types = [t for m in parts for t in cell_type_values(m.obs, spec.cell_type_column)]
        return identity_markers(
            counts, types, [genes[i] for i in shared], cell_type_column=spec.cell_type_column,
            cell_type=spec.query_cell_type, n_genes=spec.marker_genes,
        )

    def _embed(self, model, inputs: JobInputs, local: Path):
        spec, query, trained = self.spec, inputs.query, inputs.info.trained
        per_chunk = chunk_cells(int(model.n_cells), spec.chunk_size)
        chunks_total = -(-query.n_cells // per_chunk)
        self.progress.update("embedding", chunks_total=chunks_total, cells_total=query.n_cells, force=True)

        def on_chunk(index: int, done: int) -> None:
            self.progress.update("embedding", chunks_done=index, cells_done=done, message=f"chunk {index}/{chunks_total}")

        emb = embed_cells(model, query.counts, inputs.genes, inputs.gene_path, batch_size=spec.batch_size,
                          chunk_size=spec.chunk_size, precision=spec.precision, on_chunk=on_chunk)
        obs = inputs.query_adata.obs.copy()
        predictions = ad.AnnData(X=emb, obs=obs, var=pd.DataFrame(index=[f"stack_{i}" for i in range(emb.shape[1])]))
        predictions.obsm["X_stack"] = emb
        predictions.uns["stack_job"] = {"mode": "embed", "model_trained": trained, "precision": spec.precision,
                                        **query_reading(query, spec)}
        summary = PredictionSummary(mode="embed", model_trained=trained, query_cells=query.n_cells, genes=len(inputs.genes))
        predictions.write_h5ad(local, compression="lzf")
        return (int(predictions.n_obs), int(predictions.n_vars)), summary

    def write_outputs(
        self, local: Path, summary: PredictionSummary | None = None, de: pd.DataFrame | None = None,
        means: pd.DataFrame | None = None,
    ) -> dict[str, str]:
        """Upload the written predictions and write the tables and the summary (the manifest is last)."""
        store = store_for(self.output_prefix)
        written = {PREDICTIONS_FILE: store.put_file(local, self.uri(PREDICTIONS_FILE)).sha256}
        if de is not None:
            de_local = self.workdir / DE_FILE
            de.to_parquet(de_local, engine="pyarrow", index=False)
            written[DE_FILE] = store.put_file(de_local, self.uri(DE_FILE)).sha256
        if means is not None:
            means_local = self.workdir / GENE_MEANS_FILE
            means.to_parquet(means_local, engine="pyarrow", index=False)
            written[GENE_MEANS_FILE] = store.put_file(means_local, self.uri(GENE_MEANS_FILE)).sha256
        if summary is not None:
            written[SUMMARY_FILE] = store.put_bytes(
                summary.model_dump_json(indent=2).encode(), self.uri(SUMMARY_FILE)
            ).sha256
        return written

    def write_manifest(
        self, info: ckpt_mod.CheckpointInfo | None, *, device: str, peak: float, outputs: dict[str, str],
        shape: tuple[int, int], **extra,
    ) -> JobManifest:
        """Progress 'done', then the manifest, last: its presence means the outputs are complete.
        ``info`` None takes the model fields from ``extra`` (a merge: from its parts)."""
        model = {} if info is None else {
            "stack_config": info.model_config, "model_trained": info.trained, "model_parameters": info.n_parameters,
        }
        manifest = JobManifest(
            spec=self.spec, **model, device=device, precision=self.spec.precision, timings_s=self.timings,
            peak_memory_mb=round(peak, 1), outputs=outputs, predictions_shape=shape,
            started_at=self.started, finished_at=datetime.now(UTC), **extra,
        )
        self.progress.update("done", message="outputs written", force=True)
        store_for(self.output_prefix).put_bytes(manifest.model_dump_json(indent=2).encode(), self.uri(MANIFEST_FILE))
        return manifest


def check_control(spec: StackJobSpec, column: pd.Series, splits: list[str], *, name: str) -> None:
    """The control context must be in the (filtered) prompt data, and leave a treated context to compare."""
    if spec.control_value is None:
        return
    present = sorted(column.dropna().unique())
    if not (column == spec.control_value).any():
        raise InputError(
            f"{name}: control_value {spec.control_value!r} is not a value of obs[{spec.split_column!r}] in the "
            f"prompt cells (present: {present[:20]}); set control_value to one of them, or unset it to compare "
            "against the query input"
        )
    if not [v for v in splits if v != spec.control_value]:
        raise InputError(
            f"{name}: control_value {spec.control_value!r} is the only context; add treated contexts to "
            f"split_values (present: {present[:20]})"
        )


def check_cell_types(spec: StackJobSpec, query_obs: pd.DataFrame, prompt_obs: pd.DataFrame, *, name: str) -> None:
    """cell_type_column must be in the prompt (the other types, the held-out cells); the type somewhere."""
    if spec.cell_type_column is None:
        return
    column = spec.cell_type_column
    if column not in prompt_obs.columns:
        raise InputError(
            f"{name}: cell_type_column {column!r} is not in obs (columns: {list(prompt_obs.columns)[:20]}); "
            "name the obs column holding cell types, or unset it"
        )
    values = set(cell_type_values(prompt_obs, column)) | set(cell_type_values(query_obs, column))
    if spec.query_cell_type not in values:
        raise InputError(
            f"{name}: query_cell_type {spec.query_cell_type!r} is not a value of obs[{column!r}] in the query or "
            f"prompt cells (present: {sorted(v for v in values if v is not None)[:20]}); fix query_cell_type"
        )


def cell_type_values(obs: pd.DataFrame, column: str | None) -> list[str | None]:
    """Each cell's type as a string (None where missing or where the file has no such column)."""
    if column is None or column not in obs.columns:
        return [None] * len(obs)
    return list(obs_strings(obs[column]))


def held_out_mask(spec: StackJobSpec, prompt_obs: pd.DataFrame, column: pd.Series) -> np.ndarray:
    """Backtest: the prompt's real cells of the query type under a treated context (hidden from the model)."""
    if not spec.backtest:
        return np.zeros(len(prompt_obs), dtype=bool)
    of_type = np.array([t == spec.query_cell_type for t in cell_type_values(prompt_obs, spec.cell_type_column)])
    treated = column.notna().to_numpy() & (column != spec.control_value).to_numpy()
    return of_type & treated


def predictions_annotations(
    spec: StackJobSpec, inputs: JobInputs, logits: dict[str, np.ndarray], trained: bool
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """obs, var and uns of predictions.h5ad: each context's block of the query cells' obs (plus
    query_cell, split_value and the final generation logit), the model genes, what was run."""
    obs_parts = []
    for value, logit in logits.items():
        obs = inputs.query_adata.obs.copy()
        obs["query_cell"] = obs.index.astype(str)
        obs["split_value"] = value
        obs["gen_logit"] = logit
        obs.index = obs.index.astype(str) + "-" + value
        obs_parts.append(obs)
    obs = pd.concat(obs_parts)
    obs["split_value"] = pd.Categorical(obs["split_value"], categories=list(logits))
    uns = {"stack_job": {"mode": "generate", "model_trained": trained, "seed": spec.seed,
                         "num_steps": spec.num_steps, "precision": spec.precision,
                         **query_reading(inputs.query, spec)}}
    return obs, pd.DataFrame(index=inputs.genes), uns


def query_reading(query: CountMatrix, spec: StackJobSpec) -> dict[str, str]:
    """Which matrix and gene names of the query were read: the report's plot reads the same."""
    reading = {"query_matrix": query.matrix}
    if spec.gene_name_column is not None:
        reading["gene_name_column"] = spec.gene_name_column
    return reading


def query_input_means(adata: ad.AnnData, query: CountMatrix, genes: list[str], spec: StackJobSpec):
    """Mean log1p-CPM per model gene of the query cells as read (every gene of the matrix counts
    in the library, as tasks.prediction_plot computes it); genes the input lacks are 0."""
    values = matrix_at(adata, query.matrix)
    symbols = gene_symbols(var_of(adata, query.matrix), spec.gene_name_column)
    return means_mod.on_model_genes(means_mod.mean_log1p_cpm(values), gene_positions(symbols, genes))


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return "cpu"


def run_job(spec: StackJobSpec, preload: Preload | None = None, *, shard: int | None = None) -> JobManifest:
    """Run one job, or with ``shard`` that shard's part (under ``spec.shard_uri(shard)``, a prefix of
    its own: a retried task writes under a new attempt's prefix); raises InputError (nothing
    computed) or the failure (progress says failed)."""
    prefix = spec.output_prefix if shard is None else spec.shard_uri(shard)
    refuse_used_prefix(prefix)
    with tempfile.TemporaryDirectory(prefix="stack-job-") as tmp:
        job = StackJob(spec, Path(tmp), preload, output_prefix=prefix)
        return run_reporting_failure(job, job.run if shard is None else lambda: job.run_shard(shard))


def run_reporting_failure(job: StackJob, work: Callable[[], JobManifest]) -> JobManifest:
    """``work()``; a failure is written to progress.json as it propagates (once progress has begun:
    a merge refuses its parts before it writes anything)."""
    try:
        return work()
    except Exception as exc:
        if job.progress.last is not None:
            job.progress.update("failed", message=f"{type(exc).__name__}: {exc}"[:2000], force=True)
        raise


def preload_for(spec: StackJobSpec, *, model: bool = True) -> Preload:
    """The background imports this run's path needs (a merge loads no model: not arc-stack or scvi).
    Started once torch/anndata are imported (two threads importing the same packages at once can
    deadlock in importlib): they load while the inputs are read."""
    modules = modules_for(spec.mode, unpaired=spec.control_value is None, backtest=spec.backtest,
                          markers=spec.query_cell_type is not None)
    return Preload(modules if model else tuple(m for m in modules if m not in HEAVY_MODULES)).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run one STACK job (see inference/contract.py).")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--spec-json", help="The StackJobSpec as JSON.")
    source.add_argument("--spec-file", type=Path, help="A file holding the StackJobSpec JSON.")
    source.add_argument("--merge-json", help="A MergeSpec as JSON: join a sharded job's parts (inference.merge).")
    parser.add_argument(
        "--shards", help=f"A sharded job's task: task k (${TASK_INDEX_ENV}, 0 when unset) runs the k-th listed shard."
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.merge_json is not None:
        if args.shards is not None:
            print("error: --shards names a sharded job's tasks; a merge (--merge-json) takes none", file=sys.stderr)
            return 2
        # the merge builds on this module's pieces: imported here, where a merge is asked for
        from inference.merge import main_merge

        return main_merge(args.merge_json)
    raw = args.spec_json if args.spec_json is not None else args.spec_file.read_text()
    try:
        spec = StackJobSpec.model_validate_json(raw)
    except ValueError as exc:
        print(f"error: the job spec is invalid:\n{exc}", file=sys.stderr)
        return 2
    shard = None
    if args.shards is not None:
        try:
            shard = task_shard(parse_shards(args.shards, spec.shard_count), os.environ, TASK_INDEX_ENV)
        except InputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    preload = preload_for(spec)
    try:
        manifest = run_job(spec, preload, shard=shard)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    part = "" if shard is None else f" (shard {shard} of {spec.shard_count})"
    log.info(
        "done: %s predictions %s%s in %.1f s on %s (%s)", spec.mode, manifest.predictions_shape, part,
        manifest.timings_s["total_s"], manifest.device, spec.precision,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
