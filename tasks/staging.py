"""Prefect tasks that check an h5ad input and put it where the GPU job can read it.

    facts = validate_input(source, gene_list_uri=..., required_obs={"bulk_labels": ["Dendritic"]})
    staged = stage_input(source, facts)          # -> <root>/inputs/<sha256>/<name>

Validation failures (:class:`InputValidationError`) are final: retrying cannot fix a file. Only
transient storage errors (429/5xx, dropped connections, damaged transfers) are retried. Staging is
content-addressed, and its result is cached on the file's sha256 (while the object exists), so a
retried flow run does not upload an input it already staged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.states import State
from pydantic import BaseModel, Field

from clients.settings import get_settings
from clients.storage import scheme_of, store_for
from clients.storage.content import content_uri, fetch_to_cache, put_content_addressed
from clients.storage.digests import digest_file_cached
from clients.storage.transient import is_transient_storage_error
from tasks.validation import DatasetFacts, InputValidationError, read_gene_list, validate_h5ad


class StagedInput(BaseModel):
    """An input in storage, named by its content, with what validation found in it."""

    source: str = Field(description="What the caller gave: a local path, file:// or gs:// URI.")
    uri: str = Field(description="Where the input is now: <root>/inputs/<sha256>/<name>.")
    sha256: str
    size_bytes: int
    shape: tuple[int, int]
    gene_overlap: float | None
    uploaded: bool = Field(description="False when identical bytes were already there.")
    facts: DatasetFacts


def retry_only_transient(task, task_run, state: State) -> bool:
    """Prefect retry condition: retry storage hiccups, never a bad input."""
    try:
        state.result()
    except InputValidationError:
        return False
    except Exception as exc:  # noqa: BLE001 - classify, do not handle
        return is_transient_storage_error(exc)
    return False


def _cache_dir(kind: str) -> Path:
    return get_settings().data_dir / "cache" / kind


def local_input(source: str) -> Path:
    """The input as a local file (remote inputs are downloaded once per object generation)."""
    return fetch_to_cache(source, _cache_dir("downloads"))


def validate_with_digest(path: Path, digest_cache_dir: Path | None, **checks) -> DatasetFacts:
    """``validate_h5ad`` plus the file's sha256, computed on a second thread beside the matrix scan.

    Staging needs the hash; the scan reads the file anyway, so hashing alongside takes the hash off
    staging's critical path, and ties the facts to the exact bytes that were checked.
    """
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="digest")
    try:
        digest = pool.submit(digest_file_cached, path, digest_cache_dir)
        facts = validate_h5ad(path, **checks)
        return facts.model_copy(update={"sha256": digest.result().sha256})
    finally:
        pool.shutdown(wait=False)  # a rejected file is reported at once, not after its hash


# Both tasks touch storage (gene list, remote inputs, uploads): retry its hiccups, nothing else.
RETRY_TRANSIENT_STORAGE = {
    "retries": 3,
    "retry_delay_seconds": [2, 10, 30],
    "retry_condition_fn": retry_only_transient,
}


@task(name="validate-input", cache_policy=NO_CACHE, **RETRY_TRANSIENT_STORAGE)
def validate_input(
    source: str,
    gene_list_uri: str | None = None,
    *,
    counts_required: bool = True,
    required_obs: Mapping[str, Sequence[str] | None] | None = None,
    min_gene_overlap: float | None = None,
    gene_name_column: str | None = None,
) -> DatasetFacts:
    """Open the h5ad and check it (format, shape, values, genes, obs columns) before anything is spent.

    ``gene_name_column`` names the var column with gene symbols when var_names are other ids.
    """
    logger = get_run_logger()
    settings = get_settings()
    gene_list_uri = gene_list_uri or settings.model.gene_list_uri
    model_genes = read_gene_list(local_input(gene_list_uri)) if gene_list_uri else None
    threshold = settings.model.min_gene_overlap if min_gene_overlap is None else min_gene_overlap
    facts = validate_with_digest(
        local_input(source),
        _cache_dir("digests"),
        model_genes=model_genes,
        min_gene_overlap=threshold,
        counts_required=counts_required,
        required_obs=required_obs,
        gene_name_column=gene_name_column,
    )
    overlap = "not checked (no gene list)"
    if facts.gene_overlap is not None:
        overlap = f"{facts.gene_overlap:.1%} of {facts.model_genes} model genes"
    logger.info(
        "%s: %d cells x %d genes, counts in %s (STACK reads %s), gene overlap %s",
        source,
        facts.n_obs,
        facts.n_vars,
        facts.counts_location or "none (not required)",
        facts.matrix_used,
        overlap,
    )
    return facts


def _staging_cache_key(context: TaskRunContext, parameters: dict) -> str | None:
    """Same bytes, same destination, same facts: same staged input.

    Only while the staged object is still there (one metadata call): a cache entry must never hand
    back a URI that no longer resolves. None (no caching) for remote sources, whose bytes would
    have to be downloaded to be named.
    """
    source = parameters["source"]
    if scheme_of(source) != "file":
        return None
    path = local_input(source)
    digest = digest_file_cached(path, _cache_dir("digests"))
    root = parameters.get("root") or get_settings().storage_root
    uri = content_uri(root, digest.sha256, _staged_name(source))
    if not store_for(uri).exists(uri):
        return None
    facts: DatasetFacts = parameters["facts"]
    return "stage-input-" + hashlib.sha256(f"{uri}|{facts.model_dump_json()}".encode()).hexdigest()


def _staged_name(source: str) -> str:
    return Path(source.rstrip("/")).name


@task(name="stage-input", cache_key_fn=_staging_cache_key, persist_result=True, **RETRY_TRANSIENT_STORAGE)
def stage_input(source: str, facts: DatasetFacts, root: str | None = None) -> StagedInput:
    """Put a validated input at ``<root>/inputs/<sha256>/<name>``; uploads nothing if it is there."""
    logger = get_run_logger()
    root = root or get_settings().storage_root
    path = local_input(source)
    digest = digest_file_cached(path, _cache_dir("digests"))
    if facts.sha256 and digest.sha256 != facts.sha256:
        raise InputValidationError(
            source,
            f"the file changed after it was validated (sha256 {facts.sha256[:12]}… then, {digest.sha256[:12]}… now)",
            "validate and stage it again, and do not edit inputs while a run uses them",
        )
    stored = put_content_addressed(path, root, filename=_staged_name(source), digest=digest)
    if stored.uploaded:
        logger.info("Staged %s -> %s (%.1f MB uploaded)", source, stored.uri, stored.size / 1e6)
    else:
        logger.info("%s is already at %s (sha256 %s…): nothing uploaded", source, stored.uri, stored.sha256[:12])
    return StagedInput(
        source=source,
        uri=stored.uri,
        sha256=stored.sha256,
        size_bytes=stored.size,
        shape=(facts.n_obs, facts.n_vars),
        gene_overlap=facts.gene_overlap,
        uploaded=stored.uploaded,
        facts=facts,
    )
