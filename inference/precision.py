"""Numeric precision for a run: exact fp32, TF32 matmuls, or bf16 autocast with fused attention.

arc-stack runs everything in plain fp32 and its attention materialises the full score tensor
(``q @ k.T`` then softmax): for the within-cell attention that is cells x heads x 100 x 100 floats
per layer. ``fp32`` keeps the model's own code path untouched (the job then equals arc-stack's
``generate()`` bit for bit); ``tf32``/``bf16`` trade the last digits for speed: TF32 tensor-core
matmuls, bf16 autocast where asked, and PyTorch's fused ``scaled_dot_product_attention`` in place
of the materialised scores.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from inference.contract import Precision


def _fused_attention_forward(self, x, attn_mask=None, return_attn=False):
    """Same maths as ``stack.modules.attention.MultiHeadAttention.forward`` (eval mode) through SDPA."""
    if return_attn:  # attention maps need the materialised scores: use the model's own code
        return type(self).forward(self, x, attn_mask=attn_mask, return_attn=True)
    batch_size, seq_len, _ = x.shape
    qkv = self.qkv(x).reshape(batch_size, seq_len, 3, self.n_heads, self.head_dim)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    allowed = None
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        allowed = ~attn_mask  # arc-stack masks where True; SDPA attends where True
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=self.scale)
    out = out.transpose(1, 2).reshape(batch_size, seq_len, self.d_model)
    return self.proj(out), None


def use_fused_attention(model: torch.nn.Module) -> int:
    """Route every arc-stack attention block of this model instance through SDPA; returns how many."""
    from stack.modules.attention import MultiHeadAttention

    patched = 0
    for module in model.modules():
        if isinstance(module, MultiHeadAttention):
            module.forward = types.MethodType(_fused_attention_forward, module)
            patched += 1
    return patched


def configure(model: torch.nn.Module, precision: Precision) -> None:
    """Set the process-wide matmul precision and, off fp32, the fused attention."""
    exact = precision == "fp32"
    torch.backends.cuda.matmul.allow_tf32 = not exact
    torch.backends.cudnn.allow_tf32 = not exact
    torch.set_float32_matmul_precision("highest" if exact else "high")
    if not exact:
        use_fused_attention(model)


@contextlib.contextmanager
def autocast(precision: Precision, device: torch.device) -> Iterator[None]:
    """bf16 autocast for ``bf16`` (softmax and reductions stay fp32 under autocast's rules)."""
    if precision != "bf16":
        yield
        return
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
        yield
