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
  block-diagonal [W, H*M] and [H*M, W] matrices with the query and output projections folded in
  (q_h . k = x . (W_q,h^T k) + b_q,h . k; out_proj is linear), so two plain matmuls on the
  unprojected image tokens as they lie give every head's logits and the projected output: per image
  token 2 * W * H * M multiply-adds instead of 2 * W * c for the projections plus 2 * c * H * M (SAM's
  sizes: 0.36x).
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
        b, n, m = max(q.shape[0], k.shape[0], v.shape[0]), q.shape[1], k.shape[1]
        shared_keys = k.shape[0] == 1 < q.shape[0] and v.shape[0] == 1
        if not shared_keys and m * self.num_heads * _FEW_KEYS_RATIO <= n:
            return self._few_keys(q, self.k_proj(k), self.v_proj(v), b)  # projections folded in
        q = self.q_proj(q)
        if shared_keys:
            out = self._fused(q.reshape(1, b * n, -1), self.k_proj(k), self.v_proj(v)).reshape(b, n, -1)
        elif n * self.num_heads < self.internal_dim and m >= _FEW_KEYS_RATIO * n:
            out = self._few_queries(q, k, v, b)
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

    def _few_keys(self, x: Tensor, k: Tensor, v: Tensor, b: int) -> Tensor:
        """Attention of many unprojected queries x [Bq, N, W] on few projected keys and values [Bk, M, c]
        (M per head), the query and output projections folded into block-diagonal key and value matrices;
        returns the projected output [B, N, W_out]."""
        h, (bk, m, c) = self.num_heads, k.shape
        d = c // h
        kh, vh = k.reshape(bk, m, h, d), v.reshape(bk, m, h, d)
        scale = 1 / math.sqrt(d)
        # keys in the queries' space [Bk, W, H*M]: column (j, m) = W_q,j^T k_j(m), scaled; bias row b_q,j . k_j(m)
        keys = torch.einsum("bmhd,hdw->bwhm", kh, self.q_proj.weight.view(h, d, -1) * scale).reshape(bk, -1, h * m)
        bias = torch.einsum("bmhd,hd->bhm", kh, self.q_proj.bias.view(h, d) * scale).reshape(bk, 1, h * m)
        # values in the output's space [Bk, H*M, W_out]: row (j, m) = v_j(m) @ out_proj's columns of head j, plus
        # out_proj's bias / H: each head's weights sum to 1, so the rows add the bias once (no pass over the output)
        values = torch.einsum("bmhd,ohd->bhmo", vh, self.out_proj.weight.view(-1, h, d)) + self.out_proj.bias / h
        values = values.reshape(bk, h * m, -1)
        logits = torch.baddbmm(bias, x, keys) if x.shape[0] == bk else torch.matmul(x, keys) + bias
        logits = logits.view(b, -1, h, m)  # [B, N, H, M]
        weights = (logits - logits.amax(-1, keepdim=True)).exp()
        weights = weights / weights.sum(-1, keepdim=True)  # softmax over each head's M keys
        return torch.matmul(weights.view(b, -1, h * m), values)  # [B, N, W_out]


def use_prompt_attention(module: nn.Module) -> nn.Module:
    """Make every segment_anything ``Attention`` inside ``module`` a :class:`PromptAttention` (same
    parameters and state-dict keys: only the class, i.e. ``forward``, changes). Returns ``module``."""
    for m in module.modules():
        if type(m) is Attention:
            m.__class__ = PromptAttention
    return module
