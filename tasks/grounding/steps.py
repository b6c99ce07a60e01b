"""The grounding's Prefect task: score one round's prediction against the run's expectations.

The result is persisted and keyed on everything that changes it (the inputs, the grounding settings,
the formula version), so a Retry of the flow run reads the evaluation back instead of recomputing it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from prefect import get_run_logger, task
from prefect.context import TaskRunContext

from clients.settings import get_settings
from inference.contract import PredictionSummary
from tasks.grounding.de_table import read_de_table
from tasks.grounding.models import FORMULA_VERSION, Expectations, GroundingEvaluation
from tasks.grounding.pack import KnowledgePack, load_pack
from tasks.grounding.scores import score_prediction
from tasks.staging import RETRY_TRANSIENT_STORAGE


def _grounding_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """Same inputs, same settings, same formula: same evaluation."""
    payload = {
        "parameters": {k: v.model_dump(mode="json") if hasattr(v, "model_dump") else v for k, v in parameters.items()},
        "grounding": get_settings().grounding.model_dump(mode="json"),
        "formula": FORMULA_VERSION,
    }
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
    return f"stackflows-grounding-{digest}"


def grounding_pack(gene_set_uris: Sequence[str] = ()) -> KnowledgePack:
    """The pack a prediction is scored against: the settings' pack and GMT files, then the request's."""
    settings = get_settings().grounding
    return load_pack(settings.pack_uri, [*settings.gene_set_uris, *gene_set_uris])


@task(name="evaluate-grounding", persist_result=True, cache_key_fn=_grounding_cache_key, **RETRY_TRANSIENT_STORAGE)
def evaluate_grounding(
    expectations: Expectations,
    summary: PredictionSummary,
    de_uri: str,
    gene_set_uris: list[str] | None = None,
) -> GroundingEvaluation:
    """Score the prediction whose DE table is at ``de_uri`` (the job's de.parquet) and summary is ``summary``.

    ``gene_set_uris``: the request's GMT files, read beside the pack and the settings' own.
    """
    logger = get_run_logger()
    settings = get_settings().grounding
    pack = grounding_pack(gene_set_uris or [])
    de = read_de_table(de_uri)
    evaluation = score_prediction(expectations, summary, de, pack, settings, model_trained=summary.model_trained)
    scores = ", ".join(
        f"{c.name} {c.score:g}" if c.score is not None else f"{c.name} not assessed" for c in evaluation.components
    )
    logger.info("grounding: composite %s (%s); %s", evaluation.composite, evaluation.formula_version, scores)
    return evaluation
