"""Inspecting and loading STACK checkpoints with arc-stack's own loader.

Generation needs the aligned ``ICL_FinetunedModel`` (it has ``query_pos_embedding`` and the ``cls``
head); embeddings need the pretrained ``StateICLModel``. Passing the other one makes arc-stack fail
deep inside ``load_state_dict`` with a wall of key names, so the class is read off the state dict
first and a wrong one is refused with a sentence that says which checkpoint is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from inference.contract import Mode
from inference.data import InputError
from inference.make_checkpoint import UNTRAINED_MARKER

FINETUNED_CLASS = "ICL_FinetunedModel"
PRETRAINED_CLASS = "StateICLModel"
CLASS_FOR_MODE: dict[str, str] = {"generate": FINETUNED_CLASS, "embed": PRETRAINED_CLASS}


@dataclass(frozen=True)
class CheckpointInfo:
    model_class: str
    model_config: dict
    trained: bool
    n_parameters: int


def _finetuned_keys(keys: set[str]) -> bool:
    return "query_pos_embedding" in keys or any(k.startswith("cls.") for k in keys)


def inspect_checkpoint(path: Path, *, name: str = "checkpoint") -> CheckpointInfo:
    """Read the class, config and trained marker without building the model (memory-mapped)."""
    try:
        ckpt = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as exc:
        raise InputError(f"{name}: cannot read {path} as a torch checkpoint ({exc})") from exc
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise InputError(
            f"{name}: {path} is not a Lightning checkpoint with 'hyper_parameters' and 'state_dict'; "
            "pass the .ckpt file arc-stack saves (or one made by python -m inference.make_checkpoint)"
        )
    hparams = ckpt["hyper_parameters"]
    config = dict(hparams.get("model_config") or {})
    if "n_genes" not in config:
        raise InputError(f"{name}: hyper_parameters.model_config has no n_genes; not a STACK checkpoint")
    keys = {k[len("model.") :] if k.startswith("model.") else k for k in ckpt["state_dict"]}
    n_params = sum(v.numel() for k, v in ckpt["state_dict"].items() if hasattr(v, "numel"))
    model_class = FINETUNED_CLASS if _finetuned_keys(keys) else PRETRAINED_CLASS
    return CheckpointInfo(
        model_class=model_class,
        model_config=config,
        trained=not bool(hparams.get(UNTRAINED_MARKER, False)),
        n_parameters=int(n_params),
    )


def check_class_for_mode(info: CheckpointInfo, mode: Mode, *, name: str = "checkpoint") -> None:
    needed = CLASS_FOR_MODE[mode]
    if info.model_class == needed:
        return
    if mode == "generate":
        raise InputError(
            f"{name} is a pretrained {PRETRAINED_CLASS} checkpoint (no query_pos_embedding / cls head); "
            f"in-context generation needs an aligned {FINETUNED_CLASS} checkpoint. Point checkpoint_uri "
            "at the aligned (fine-tuned) checkpoint, or run mode 'embed' with this one."
        )
    raise InputError(
        f"{name} is an aligned {FINETUNED_CLASS} checkpoint; embeddings need the pretrained "
        f"{PRETRAINED_CLASS} checkpoint. Point checkpoint_uri at the pretrained checkpoint, or run "
        "mode 'generate' with this one."
    )


def check_gene_count(info: CheckpointInfo, n_genes: int, *, name: str = "checkpoint") -> None:
    if int(info.model_config["n_genes"]) != n_genes:
        raise InputError(
            f"{name} was built for {info.model_config['n_genes']} genes but the gene list has {n_genes}; "
            "pass the gene list the checkpoint was trained with"
        )


def load_model(path: Path, mode: Mode, device: torch.device) -> torch.nn.Module:
    """The model in eval mode on ``device``, through arc-stack's own loader (which wants a .ckpt name)."""
    from stack.model_loading import load_model_from_checkpoint

    return load_model_from_checkpoint(str(path), model_class=CLASS_FOR_MODE[mode], device=device)
