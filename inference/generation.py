"""In-context generation ("mdm" mode) with STACK: arc-stack's loop, kept on the device.

arc-stack's ``get_incontext_generation`` runs ``num_steps`` rounds; each round mixes prompt cells
and query cells into windows of ``n_cells``, builds one large AnnData of all windows, runs the model
through a DataLoader, copies every window cell's NB mean, dispersion and sample to the host, keeps
only the query rows and rebuilds the query AnnData. This module runs the same rounds with the
model's own building blocks (``_reduce_and_tokenize``, ``_run_attention_layers``,
``_compute_nb_parameters``, ``cls``, ``query_pos_embedding``) on tensors that stay on the device:

- windows are gathered by index from two sparse host matrices (prompt counts, current query
  state): only the batch's non-zeros cross to the device, where the windows are made dense;
- only the query rows' samples (as CSR) and logits leave the device; the query state and each
  round's fresh samples stay sparse on the host;
- memory is one batch of windows on the device plus the sparse state on the host, whatever the
  number of steps or query cells.

Every random draw happens in arc-stack's order and shapes (numpy permutation of the prompt cells,
the DataLoader's base seed, the zero-length gene mask ``randperm``, NB samples of all window cells
per batch), whatever the precision: in fp32 the output equals ``stack.cli.generation.generate()``
bit for bit, and in bf16/TF32 the samples differ only through the model's numbers (on CUDA each
element draws from its own Philox stream, so nearby parameters give nearby samples).

Two cases where arc-stack raises are handled instead: a query set smaller than one window's query
slots (windows are filled by cycling the query cells), and a scheduled unmask quantile outside
[0, 1] (clipped), which untrained checkpoints reach after a few steps.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from inference import precision as precision_mod
from inference.contract import Precision

# arc-stack generate()'s defaults for mode "mdm".
PROMPT_RATIO = 0.25
CONTEXT_RATIO = 0.4
CONTEXT_RATIO_MIN = 0.2


@dataclass(frozen=True)
class StepPlan:
    """How one round lays out its windows."""

    mask_rate: np.float32
    context_ratio: np.float32
    n_test: int  # query slots per window
    n_base: int  # prompt slots per window
    n_kept: int  # prompt cells that attend only among themselves
    n_context: int  # cells whose dispersion sets the NB theta; later cells get the query embedding
    windows: int


def schedule(num_steps: int) -> list[tuple[np.float32, np.float32]]:
    """(mask rate, context ratio) per round, computed exactly as arc-stack does (float32)."""
    t = (np.arange(num_steps, dtype=np.float32) + 1) / num_steps
    if num_steps == 1:
        cr_list = np.array([CONTEXT_RATIO], dtype=np.float32)
    else:
        cr_list = np.linspace(CONTEXT_RATIO_MIN, CONTEXT_RATIO, num_steps, dtype=np.float32)
    mr_list = 1 - t
    mr_list[-1] = 0.0
    return list(zip(mr_list, cr_list))


def plan_steps(num_steps: int, n_cells: int, n_query: int) -> list[StepPlan]:
    plans = []
    for mr, cr in schedule(num_steps):
        ratio = PROMPT_RATIO + cr
        n_test = max(1, int(n_cells * (1 - ratio)))
        plans.append(
            StepPlan(
                mask_rate=mr,
                context_ratio=cr,
                n_test=n_test,
                n_base=n_cells - n_test,
                n_kept=int(PROMPT_RATIO * n_cells),
                n_context=int((PROMPT_RATIO + cr) * n_cells),
                windows=math.ceil(n_query / n_test),
            )
        )
    return plans


def chunks_in_step(plan: StepPlan, batch_size: int, chunk_size: int) -> int:
    """Progress units in one round: runs of whole batches covering at least ``chunk_size`` query cells."""
    batches = math.ceil(plan.windows / batch_size)
    per_chunk = max(1, math.ceil(chunk_size / (plan.n_test * batch_size)))
    return math.ceil(batches / per_chunk)


def _window_indices(plan: StepPlan, n_query: int, base_perm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Prompt and query row indices per window, and how many query slots are real (not padding)."""
    base_idx = np.empty((plan.windows, plan.n_base), dtype=np.int64)
    test_idx = np.empty((plan.windows, plan.n_test), dtype=np.int64)
    n_real = np.empty(plan.windows, dtype=np.int64)
    ptr = 0
    for w in range(plan.windows):
        current = np.arange(w * plan.n_test, min((w + 1) * plan.n_test, n_query))
        n_real[w] = len(current)
        need = plan.n_test - len(current)
        if need > 0:  # arc-stack pads with the first query cells (np.resize cycles if too few)
            current = np.concatenate([current, np.resize(np.arange(n_query), need)])
        test_idx[w] = current
        base_idx[w] = base_perm[np.arange(ptr, ptr + plan.n_base) % len(base_perm)]
        ptr = (ptr + plan.n_base) % len(base_perm)
    return base_idx, test_idx, n_real


def _sample_nb(mean: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """NB counts through scvi's NegativeBinomial, as arc-stack samples them (gamma-Poisson)."""
    from scvi.distributions import NegativeBinomial

    return NegativeBinomial(mu=mean, theta=theta).sample()


@torch.no_grad()
def _forward_batch(
    model: torch.nn.Module,
    features: torch.Tensor,
    plan: StepPlan,
    *,
    n_real: np.ndarray,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """One batch of windows: NB samples and generation logits of each window's real query rows."""
    batch, n_cells, n_genes = features.shape
    device = features.device
    torch.randperm(n_genes, device=device)  # arc-stack draws a zero-length gene mask per batch
    gene_attn_mask = torch.zeros(n_cells, n_cells, dtype=torch.bool, device=device)
    gene_attn_mask[: int(PROMPT_RATIO * n_cells), int(PROMPT_RATIO * n_cells) :] = True
    gene_attn_mask = gene_attn_mask.unsqueeze(0).unsqueeze(0)

    lib_size = features.sum(dim=-1, keepdim=True)
    tokens = model._reduce_and_tokenize(torch.log1p(features))
    n_context = plan.n_context
    if getattr(model, "query_pos_embedding", None) is not None and plan.n_kept < n_cells:
        qpe = model.query_pos_embedding.unsqueeze(0).unsqueeze(0).to(device=tokens.device, dtype=tokens.dtype)
        query_rows = torch.zeros_like(tokens)
        query_rows[:, n_context:, :, :] = 1.0
        tokens = tokens + qpe * query_rows
    x = model._run_attention_layers(tokens, gene_attn_mask=gene_attn_mask)
    cells = x.reshape(batch, n_cells, -1)

    logits = torch.zeros(batch, n_cells, dtype=torch.float32, device=device)
    if getattr(model, "cls", None) is not None and n_context < n_cells:
        context_mean = cells[:, :n_context].mean(dim=1)
        tail = cells[:, n_context:, :]
        inp = torch.cat([context_mean.unsqueeze(1).expand(-1, tail.size(1), -1), tail], dim=-1)
        logits = torch.cat(
            [torch.zeros(batch, n_context, dtype=torch.float32, device=device), model.cls(inp).squeeze(-1).float()],
            dim=1,
        )

    nb_mean, nb_dispersion, _ = model._compute_nb_parameters(cells, lib_size)
    nb_mean = nb_mean.float()
    theta = nb_dispersion[:, :n_context, :].float().median(dim=1, keepdim=True).values
    # Sample every window cell in arc-stack's shapes so the RNG is consumed identically.
    flat_theta = theta.expand(-1, n_cells, -1).reshape(-1, n_genes)
    samples = _sample_nb(nb_mean.reshape(-1, n_genes), flat_theta).reshape(batch, n_cells, n_genes)
    start = plan.n_base
    samples = samples[:, start : start + plan.n_test]
    rows = [samples[w, : n_real[w]] for w in range(batch)]
    logit_rows = [logits[w, start : start + n_real[w]] for w in range(batch)]
    return rows, logit_rows


def _update_masked(is_masked: np.ndarray, new_logit: np.ndarray, mask_rate: np.float32) -> np.ndarray:
    """arc-stack's rule for which query cells keep their previous values this round (bool per cell)."""
    n = is_masked.shape[0]
    keep = np.zeros(n, dtype=bool)
    keep[~is_masked] = True
    n_masked = is_masked.sum()
    if n_masked:
        unmask_rate = (n_masked / n - mask_rate) * n / n_masked
        # q stays np.float64 as in arc-stack: a Python float would interpolate in float32.
        threshold = np.quantile(new_logit[is_masked], np.clip(unmask_rate, 0.0, 1.0))
        keep[is_masked] = new_logit[is_masked] > threshold
    is_masked[~keep] = False
    is_masked[new_logit > 0] = True
    return keep


def rows_to_device(matrix: sp.csr_matrix, rows: np.ndarray, device: torch.device) -> torch.Tensor:
    """``matrix[rows]`` dense on ``device``: only the rows' non-zeros cross, the dense block is built there."""
    block = matrix[rows]
    n_rows, n_genes = block.shape
    crow = torch.from_numpy(block.indptr.astype(np.int64, copy=False)).to(device)
    col = torch.from_numpy(block.indices.astype(np.int64, copy=False)).to(device)
    values = torch.from_numpy(block.data.astype(np.float32, copy=False)).to(device)
    with warnings.catch_warnings():  # torch flags sparse CSR as beta; building and densifying is stable
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, size=(n_rows, n_genes)).to_dense()


def to_scipy_csr(dense: torch.Tensor) -> sp.csr_matrix:
    """Sparse on the tensor's device, then only the non-zeros cross to the host."""
    with warnings.catch_warnings():  # torch flags sparse CSR as beta; converting to it is stable
        warnings.simplefilter("ignore", UserWarning)
        csr = dense.to_sparse_csr()
    return sp.csr_matrix(
        (csr.values().cpu().numpy(), csr.col_indices().cpu().numpy(), csr.crow_indices().cpu().numpy()),
        shape=tuple(dense.shape),
    )


def take_rows(keep: np.ndarray, old: sp.csr_matrix, new: sp.csr_matrix) -> sp.csr_matrix:
    """Row i of ``old`` where ``keep[i]``, else row i of ``new`` (CSR in, CSR out; no dense copy)."""
    n = keep.shape[0]
    both = sp.vstack([old, new], format="csr")
    return both[np.where(keep, np.arange(n), n + np.arange(n))]


@torch.no_grad()
def generate_split(
    model: torch.nn.Module,
    prompt: sp.csr_matrix,
    query: sp.csr_matrix,
    *,
    num_steps: int,
    seed: int,
    batch_size: int,
    chunk_size: int,
    precision: Precision,
    device: torch.device,
    gene_input_mask: torch.Tensor | None = None,
    on_chunk: Callable[[int, int], None] | None = None,
) -> tuple[sp.csr_matrix, np.ndarray]:
    """Generate every query cell under one prompt (context); returns (counts CSR, final logits).

    ``prompt`` and ``query`` are (cells, model genes) float32 CSR counts on the host. Each batch's
    windows are gathered from them and made dense on ``device``; the query state and each round's
    fresh samples stay sparse on the host, so memory is one batch on the device plus the sparse
    state, whatever the number of steps.
    ``gene_input_mask`` zeroes model-input columns arc-stack cannot match (see stack_job).
    ``on_chunk(step, query_cells_done_in_step)`` is called as chunks finish.
    """
    n_cells = int(model.n_cells)
    n_query = query.shape[0]
    n_prompt = prompt.shape[0]
    state = sp.csr_matrix(query, dtype=np.float32)
    is_masked = np.ones(n_query, dtype=bool)
    new_logit = np.zeros(n_query, dtype=np.float32)
    for step, plan in enumerate(plan_steps(num_steps, n_cells, n_query), start=1):
        np.random.seed(seed + step)
        torch.manual_seed(seed + step)
        base_perm = np.random.permutation(n_prompt)
        torch.empty((), dtype=torch.int64).random_()  # the DataLoader's base seed in arc-stack
        base_idx, test_idx, n_real = _window_indices(plan, n_query, base_perm)
        window_rows = np.concatenate([base_idx, n_prompt + test_idx], axis=1)  # rows of [prompt; state]
        cells = sp.vstack([prompt, state], format="csr")
        batches_per_chunk = max(1, math.ceil(chunk_size / (plan.n_test * batch_size)))
        fresh_parts: list[sp.csr_matrix] = []
        done = 0
        for b, first in enumerate(range(0, plan.windows, batch_size), start=1):
            sl = slice(first, min(first + batch_size, plan.windows))
            rows = window_rows[sl]
            features = rows_to_device(cells, rows.ravel(), device).reshape(rows.shape[0], n_cells, -1)
            if gene_input_mask is not None:
                features = features * gene_input_mask
            with precision_mod.autocast(precision, device):
                samples, logit_rows = _forward_batch(model, features, plan, n_real=n_real[sl])
            del features
            # Windows cover the query cells in order: their real rows, concatenated, are this batch's rows.
            fresh_parts.append(to_scipy_csr(torch.cat(samples, dim=0)))
            offset = first * plan.n_test
            logits = torch.cat(logit_rows).cpu().numpy()
            new_logit[offset : offset + logits.shape[0]] = logits
            done += logits.shape[0]
            if on_chunk is not None and (b % batches_per_chunk == 0 or sl.stop == plan.windows):
                on_chunk(step, done)
        del cells
        fresh = sp.vstack(fresh_parts, format="csr")
        del fresh_parts
        keep = _update_masked(is_masked, new_logit.copy(), plan.mask_rate)
        state = take_rows(keep, state, fresh)
        del fresh
    state.eliminate_zeros()
    return state, new_logit.copy()
