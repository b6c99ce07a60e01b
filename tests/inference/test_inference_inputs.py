"""Bad inputs fail fast with a message that names the input and the fix; fast paths keep the maths."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from inference.data import InputError
from inference.make_checkpoint import build_checkpoint, write_gene_list
from inference.stack_job import run_job
from tests.inference.conftest import MODEL_GENES, SIZES, TinyInputs


def test_inference_gene_list_without_overlap_is_refused(tiny: TinyInputs, tmp_path: Path) -> None:
    other = [f"OTHER{i}" for i in range(len(MODEL_GENES))]
    genes = write_gene_list(other, tmp_path / "other.pkl")
    ckpt = build_checkpoint(other, tmp_path / "other.ckpt", **SIZES)
    with pytest.raises(InputError, match="none of its 60 genes .* is in the model's gene list"):
        run_job(tiny.spec(tmp_path / "out", gene_list_uri=str(genes), checkpoint_uri=str(ckpt)))


def test_inference_gene_list_must_match_the_checkpoint(tiny: TinyInputs, tmp_path: Path) -> None:
    genes = write_gene_list(MODEL_GENES[:-1], tmp_path / "short.pkl")
    with pytest.raises(InputError, match="built for 60 genes but the gene list has 59"):
        run_job(tiny.spec(tmp_path / "out", gene_list_uri=str(genes)))


def test_inference_embedding_refuses_the_generation_checkpoint(tiny: TinyInputs, tmp_path: Path) -> None:
    spec = tiny.spec(tmp_path / "out", mode="embed", prompt_uri=None, split_column=None)
    with pytest.raises(InputError, match="embeddings need the pretrained StateICLModel"):
        run_job(spec)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"split_column": "batch"}, "split column 'batch' is not in obs"),
        ({"split_values": ["d1", "d9"]}, r"split values \['d9'\] are not in obs\['donor'\]"),
        ({"prompt_obs_filter": {"tissue": ["lung"]}}, "obs filter names column 'tissue'"),
        ({"query_obs_filter": {"cell_type": ["NK"]}}, "no cells match the obs filter"),
        ({"query_uri": "file:///nonexistent/q.h5ad"}, "query_uri: file:///nonexistent/q.h5ad does not exist"),
    ],
)
def test_inference_bad_inputs_name_the_problem(tiny: TinyInputs, tmp_path: Path, overrides: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        run_job(tiny.spec(tmp_path / "out", **overrides))
    assert not (tmp_path / "out" / "predictions.h5ad").exists()


def test_inference_fused_attention_matches_the_models_own(tiny: TinyInputs) -> None:
    """The bf16/TF32 path swaps in SDPA; in fp32 it must compute what arc-stack's attention does."""
    from stack.model_loading import load_model_from_checkpoint

    from inference.precision import use_fused_attention

    model = load_model_from_checkpoint(str(tiny.generate_ckpt), model_class="ICL_FinetunedModel", device="cpu")
    fused = copy.deepcopy(model)
    assert use_fused_attention(fused) == 2 * SIZES["n_layers"]
    torch.manual_seed(0)
    tokens = torch.randn(2, SIZES["n_cells"], SIZES["n_hidden"], SIZES["token_dim"])
    mask = torch.zeros(SIZES["n_cells"], SIZES["n_cells"], dtype=torch.bool)
    mask[:4, 4:] = True
    with torch.no_grad():
        expected = model._run_attention_layers(tokens, gene_attn_mask=mask[None, None])
        got = fused._run_attention_layers(tokens, gene_attn_mask=mask[None, None])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
