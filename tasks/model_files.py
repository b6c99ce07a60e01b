"""Which STACK checkpoint and gene list a run uses, and making sure its GPU job can read them.

The request may name them; otherwise the settings do. A missing one is reported before anything is
spent, with how to fix it. A local file used with a remote storage root (``gs://``) is staged there
content-addressed, because a Cloud Batch job cannot read the flow's disk.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from clients.settings import get_settings
from clients.storage import local_path_of, scheme_of, store_for
from clients.storage.content import put_content_addressed
from tasks.validation import InputValidationError
from tasks.staging import RETRY_TRANSIENT_STORAGE

_HOW_TO_SET = {
    "checkpoint": (
        "set checkpoint_uri in the request or STACKFLOWS_MODEL__CHECKPOINT_URI (a trained STACK checkpoint; "
        "`python -m inference.make_checkpoint` builds a small untrained one for trying the pipeline)"
    ),
    "gene list": (
        "set gene_list_uri in the request or STACKFLOWS_MODEL__GENE_LIST_URI (the gene symbols the checkpoint "
        "was trained on: a pickled list, .json or .txt)"
    ),
}


class ModelFiles(BaseModel):
    """URIs the GPU job reads the model from."""

    checkpoint_uri: str
    gene_list_uri: str


@task(name="resolve-model-files", cache_policy=NO_CACHE, **RETRY_TRANSIENT_STORAGE)
def resolve_model_files(checkpoint_uri: str | None, gene_list_uri: str | None) -> ModelFiles:
    """The request's model files, else the settings'; checked to exist and placed where the job can read them."""
    model = get_settings().model
    return ModelFiles(
        checkpoint_uri=_job_readable("checkpoint", checkpoint_uri or model.checkpoint_uri),
        gene_list_uri=_job_readable("gene list", gene_list_uri or model.gene_list_uri),
    )


def _job_readable(kind: str, uri: str | None) -> str:
    if not uri:
        raise InputValidationError(f"(no {kind})", f"no STACK {kind} was given", _HOW_TO_SET[kind])
    if scheme_of(uri) != "file":
        if not store_for(uri).exists(uri):
            raise InputValidationError(uri, f"the {kind} does not exist", f"check the URI; {_HOW_TO_SET[kind]}")
        return uri
    path = local_path_of(uri)
    if not path.is_file():
        raise InputValidationError(uri, f"the {kind} file does not exist", f"check the path; {_HOW_TO_SET[kind]}")
    root = get_settings().storage_root
    if scheme_of(root) == "file":
        return path.as_uri()
    stored = put_content_addressed(path, root)
    get_run_logger().info("%s %s staged to %s for the GPU job", kind.capitalize(), path, stored.uri)
    return stored.uri
