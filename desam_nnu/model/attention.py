"""SAM's two-way-transformer attention with PRIM's batch shapes computed without copies.

:class:`PromptAttention` is segment_anything's ``Attention`` (same weights, same math) with only
``forward`` overridden, because PRIM calls it with shapes SAM's code handles by materialising
broadcasts. In DeSAM's grid mode PRIM decodes 81 prompts on one image:

* token -> image attention in the first layer: 81 x 7 prompt-token queries against the *shared*
  image keys and values (batch 1). SAM's ``q @ k`` expands the keys 81 times; here the prompts are
  folded into the query rows of one batch-1 attention (rows of a softmax are independent: exact).
* image -> token attention: 1024-4096 image-token queries against only 7 prompt tokens. Per head
  that is a [N, 7] softmax; SAM splits heads with transposes (copies of the image side) and torch's
  softmax over a last dimension of 7 is slow. Here the keys and values of all heads go into
  block-diagonal [C, H*M] and [H*M, C] matrices, so two plain matmuls on the image tokens as they lie
  give every head's logits and the heads' recombined output directly.
* token -> image attention with per-prompt image keys (later layers, the final attention, and
  training): 7 queries against 1024-4096 keys. Instead of projecting every image token to keys and
  values, each head's few queries are mapped into the image tokens' space (W_k^T q) and the
  attention-weighted image tokens are projected afterwards (softmax rows sum to 1): the same
  result for N*H / c of the projection cost (7 * 8 / 128 for SAM).
* everything else: ``scaled_dot_product_attention`` (fused; flash attention on CUDA).

Outputs equal SAM's to float rounding (tests/test_model_decode.py), forward and backward.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from segment_anything.modeling.transformer import Attention
from torch import Tensor, nn

__all__ = ["PromptAttention", "use_prompt_attention"]

# image -> token attention goes block-diagonal when the H*M logits per query are this much fewer
# than the queries: it then costs H times the ideal multiply-adds but no copies.
_FEW_KEYS_RATIO = 8


class PromptAttention(Attention):
    """segment_anything's Attention; ``forward(q [Bq, N, C], k [Bk, M, C], v [Bk, M, C])`` with
    Bq, Bk each 1 or B (broadcast), returning [B, N, C]."""

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:  # type: ignore[override]
        q = self.q_proj(q)
        b, n, m = max(q.shape[0], k.shape[0], v.shape[0]), q.shape[1], k.shape[1]
        if k.shape[0] == 1 < q.shape[0] and v.shape[0] == 1:
            out = self._fused(q.reshape(1, b * n, -1), self.k_proj(k), self.v_proj(v)).reshape(b, n, -1)
        elif n * self.num_heads < self.internal_dim and m >= _FEW_KEYS_RATIO * n:
            out = self._few_queries(q, k, v, b)
        elif m * self.num_heads * _FEW_KEYS_RATIO <= n:
            out = self._few_keys(q, self.k_proj(k), self.v_proj(v), b)
        else:
            out = self._fused(*(t.expand(b, -1, -1) for t in (q, self.k_proj(k), self.v_proj(v))))
        return self.out_proj(out)

    def _few_queries(self, q: Tensor, k: Tensor, v: Tensor, b: int) -> Tensor:
        """Attention of few projected queries on many unprojected keys and values.

        q_h . (W_k,h k + b_k,h) = (W_k,h^T q_h) . k + q_h . b_k,h, and the softmax rows sum to 1, so
        softmax @ (v W_v,h^T + b_v,h) = (softmax @ v) W_v,h^T + b_v,h: each head maps its N queries
        into the keys' C dimensions instead of projecting all M keys and values (N * H < c)."""
        h, c, d = self.num_heads, self.internal_dim, self.internal_dim // self.num_heads
        n, width = q.shape[1], k.shape[2]
        qh = q.reshape(q.shape[0], n, h, d)
        wk = self.k_proj.weight.view(h, d, width)
        q_in_keys = torch.einsum("bnhd,hdc->bhnc", qh, wk).reshape(q.shape[0], h * n, width)
        logits = torch.matmul(q_in_keys, k.transpose(1, 2))  # [B, H*N, M]
        logits = logits + torch.einsum("bnhd,hd->bhn", qh, self.k_proj.bias.view(h, d)).reshape(-1, h * n, 1)
        weights = torch.softmax(logits / math.sqrt(d), dim=-1)
        mixed = torch.matmul(weights, v).view(b, h, n, width)  # [B, H, N, C_in]
        out = torch.einsum("bhnc,hdc->bnhd", mixed, self.v_proj.weight.view(h, d, width)) + self.v_proj.bias.view(h, d)
        return out.reshape(b, n, c)

    def _fused(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        heads = [self._separate_heads(t, self.num_heads) for t in (q, k, v)]
        return self._recombine_heads(F.scaled_dot_product_attention(*heads))

    def _few_keys(self, q: Tensor, k: Tensor, v: Tensor, b: int) -> Tensor:
        """Attention of many queries on few keys (M per head) through block-diagonal key / value matrices."""
        h, (_, m, c) = self.num_heads, k.shape
        d = c // h
        eye = torch.eye(h, dtype=k.dtype, device=k.device)[None, :, None, :, None]
        # keys [Bk, C, H*M]: head j's keys in rows j*d..(j+1)*d and columns j*m..(j+1)*m, zero elsewhere
        kb = (k.reshape(k.shape[0], m, h, d).permute(0, 2, 3, 1).unsqueeze(3) * eye).reshape(k.shape[0], c, h * m)
        # values [Bk, H*M, C]: head j's values in rows j*m..(j+1)*m and columns j*d..(j+1)*d
        vb = (v.reshape(v.shape[0], m, h, d).permute(0, 2, 1, 3).unsqueeze(3) * eye).reshape(v.shape[0], h * m, c)
        logits = torch.matmul(q, kb / math.sqrt(d)).view(b, -1, h, m)  # [B, N, H, M]
        weights = (logits - logits.amax(-1, keepdim=True)).exp()
        weights = weights / weights.sum(-1, keepdim=True)  # softmax over each head's M keys
        return torch.matmul(weights.view(b, -1, h * m), vb)  # [B, N, C], heads already recombined


def use_prompt_attention(module: nn.Module) -> nn.Module:
    """Make every segment_anything ``Attention`` inside ``module`` a :class:`PromptAttention` (same
    parameters and state-dict keys: only the class, i.e. ``forward``, changes). Returns ``module``."""
    for m in module.modules():
        if type(m) is Attention:
            m.__class__ = PromptAttention
    return module
