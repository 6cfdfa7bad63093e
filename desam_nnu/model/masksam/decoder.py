"""MaskSAM's prompt side: SAM's prompt encoder with a slice embedding on its dense positional encoding, and SAM's
mask decoder with a classifier token and slice-mixing adapters in its two-way transformer (bxie9/MaskSAM commit
c6860c5: ``prompt_encoder_tposembed.py``, ``mask_decoder_classifier.py``,
``transformer_adapter3d_tfusionmiddledwconv_acdc_tqreshape.py``).

Built on segment_anything's classes, so SAM's keys load by SAM's names; the added parameters carry the official
names (``temporal_embedding``, ``*_Adapter``). Prompt batches are ordered (volume, slice, query): every slice of
a patch gets the same Q queries, and the adapters mix a query's T slices.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from segment_anything.modeling.mask_decoder import MaskDecoder
from segment_anything.modeling.prompt_encoder import PromptEncoder
from segment_anything.modeling.transformer import TwoWayAttentionBlock, TwoWayTransformer
from torch import Tensor, nn

from .adapters import SliceConvAdapter, SliceMLPAdapter


class SlicePromptEncoder(PromptEncoder):
    """SAM's prompt encoder plus ``temporal_embedding`` [T, C, h, w] (zero at start), added per slice to the
    dense positional encoding (:meth:`slice_dense_pe`). Boxes and masks embed as in SAM."""

    def __init__(self, embed_dim: int, image_embedding_size: Tuple[int, int], input_image_size: Tuple[int, int],
                 mask_in_chans: int, num_frames: int) -> None:
        super().__init__(embed_dim, image_embedding_size, input_image_size, mask_in_chans)
        self.num_frames = num_frames
        self.temporal_embedding = nn.Parameter(torch.zeros(num_frames, embed_dim, *image_embedding_size))

    def slice_dense_pe(self, batch: int, frame: Optional[Tuple[int, int]] = None) -> Tensor:
        """[batch, C, h, w] for a batch ordered (volume, slice): SAM's dense encoding of the h x w grid plus the
        slice's embedding. ``frame``: the grid's cells are (i + 0.5) / frame instead of / (h, w), as the official
        patch-256 variant places its 16 x 16 grid in the top-left corner of a 64 x 64 frame."""
        if batch % self.num_frames:
            raise ValueError(f"a batch of {batch} slices is not whole patches of {self.num_frames}")
        h, w = self.image_embedding_size
        fh, fw = frame or (h, w)
        device = self.temporal_embedding.device
        y = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / fh
        x = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / fw
        grid = torch.stack([x[None, :].expand(h, w), y[:, None].expand(h, w)], dim=-1)
        pe = self.pe_layer._pe_encoding(grid).permute(2, 0, 1)  # [C, h, w]
        return (pe[None] + self.temporal_embedding).repeat(batch // self.num_frames, 1, 1, 1)


class SliceAdaptedTwoWayBlock(TwoWayAttentionBlock):
    """SAM's two-way block with the official adapters: ``Space_Queries_Adapter`` after the tokens' self-attention,
    ``Cross_Space_Adapter1`` after token-to-image attention, ``MLP_Queries_Adapter`` (no skip, x ``scale``) beside
    the MLP, and ``Cross_Space_Adapter2`` (a DW-conv over (slice, row, column) of each query's image tokens) after
    image-to-token attention. Each adapter wraps its attention's output, before SAM's residual and norm."""

    def __init__(self, embedding_dim: int, num_heads: int, mlp_dim: int, num_frames: int, num_queries: int,
                 grid: Tuple[int, int], skip_first_layer_pe: bool, scale: float = 0.5) -> None:
        super().__init__(embedding_dim, num_heads, mlp_dim, nn.ReLU, 2, skip_first_layer_pe)
        self.scale = scale
        queries = dict(num_frames=num_frames, num_queries=num_queries)
        self.MLP_Queries_Adapter = SliceMLPAdapter(embedding_dim, skip_connect=False, **queries)
        self.Space_Queries_Adapter = SliceMLPAdapter(embedding_dim, **queries)
        self.Cross_Space_Adapter1 = SliceMLPAdapter(embedding_dim, **queries)
        self.Cross_Space_Adapter2 = SliceConvAdapter(embedding_dim, size=grid, **queries)

    def forward(self, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor) -> Tuple[Tensor, Tensor]:
        """queries [B*T*Q, N, C], keys [B*T*Q, h*w, C] -> the same."""
        if self.skip_first_layer_pe:
            queries = self.Space_Queries_Adapter(self.self_attn(q=queries, k=queries, v=queries))
        else:
            q = queries + query_pe
            queries = queries + self.Space_Queries_Adapter(self.self_attn(q=q, k=q, v=queries))
        queries = self.norm1(queries)
        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.Cross_Space_Adapter1(self.cross_attn_token_to_image(q=q, k=k, v=keys)))
        queries = self.norm3(queries + self.mlp(queries) + self.scale * self.MLP_Queries_Adapter(queries))
        q, k = queries + query_pe, keys + key_pe
        keys = self.norm4(keys + self.Cross_Space_Adapter2(self.cross_attn_image_to_token(q=k, k=q, v=queries)))
        return queries, keys


class SliceAdaptedTwoWayTransformer(TwoWayTransformer):
    """SAM's two-way transformer of :class:`SliceAdaptedTwoWayBlock` layers, and ``Space_Adapter`` on the final
    token-to-image attention."""

    def __init__(self, num_frames: int, num_queries: int, grid: Tuple[int, int], depth: int = 2,
                 embedding_dim: int = 256, num_heads: int = 8, mlp_dim: int = 2048) -> None:
        super().__init__(0, embedding_dim, num_heads, mlp_dim)
        self.depth = depth
        for i in range(depth):
            self.layers.append(SliceAdaptedTwoWayBlock(embedding_dim, num_heads, mlp_dim, num_frames, num_queries,
                                                       grid, skip_first_layer_pe=i == 0))
        self.Space_Adapter = SliceMLPAdapter(embedding_dim, num_frames=num_frames, num_queries=num_queries)

    def forward(self, image_embedding: Tensor, image_pe: Tensor, point_embedding: Tensor) -> Tuple[Tensor, Tensor]:
        """image_embedding, image_pe [B*T*Q, C, h, w]; point_embedding [B*T*Q, N, C] -> (queries, keys)."""
        keys = image_embedding.flatten(2).permute(0, 2, 1)
        key_pe = image_pe.flatten(2).permute(0, 2, 1)
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries=queries, keys=keys, query_pe=point_embedding, key_pe=key_pe)
        q, k = queries + point_embedding, keys + key_pe
        queries = queries + self.Space_Adapter(self.final_attn_token_to_image(q=q, k=k, v=keys))
        return self.norm_final_attn(queries), keys


class ClassifierMaskDecoder(MaskDecoder):
    """SAM's mask decoder plus a classifier token: ``classifier_token_Adapter`` (plus the prompt generator's
    per-query feature) joins the output tokens last, and ``classifier_embed_Adapter`` reads it into C + 1 class
    logits (the last: no object)."""

    def __init__(self, transformer: nn.Module, num_classes: int, transformer_dim: int = 256) -> None:
        super().__init__(transformer_dim=transformer_dim, transformer=transformer, num_multimask_outputs=3,
                         iou_head_depth=3, iou_head_hidden_dim=256)
        self.classifier_token_Adapter = nn.Embedding(1, transformer_dim)
        self.classifier_embed_Adapter = nn.Linear(transformer_dim, num_classes + 1)

    def forward(self, image_embeddings: Tensor, image_pe: Tensor, sparse_prompt_embeddings: Tensor,
                dense_prompt_embeddings: Tensor, multimask_output: bool = False,
                classifier_outputs: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor]:
        """image_embeddings, image_pe [B*T, C, h, w] (each repeated for its Q queries); sparse [B*T*Q, N, C];
        dense [B*T*Q, C, h, w]; classifier_outputs [B*T*Q, 1, C] -> masks [B*T*Q, 1 (3 with
        multimask_output), 4h, 4w], IoU [B*T*Q, 1 (3)], class logits [B*T*Q, C + 1]."""
        n = sparse_prompt_embeddings.shape[0]
        tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)[None].expand(n, -1, -1)
        classifier = self.classifier_token_Adapter.weight[None].expand(n, -1, -1)
        if classifier_outputs is not None:
            classifier = classifier + classifier_outputs
        tokens = torch.cat([tokens, sparse_prompt_embeddings, classifier], dim=1)
        per_image = n // image_embeddings.shape[0]
        src = torch.repeat_interleave(image_embeddings, per_image, dim=0) + dense_prompt_embeddings
        pos = torch.repeat_interleave(image_pe, n // image_pe.shape[0], dim=0)
        b, c, h, w = src.shape
        hs, src = self.transformer(src, pos, tokens)
        classes = self.classifier_embed_Adapter(hs[:, -1])
        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        hyper = torch.stack([mlp(hs[:, 1 + i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1)
        masks = (hyper @ upscaled.flatten(2)).view(b, -1, *upscaled.shape[2:])
        iou = self.iou_prediction_head(hs[:, 0])
        keep = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, keep], iou[:, keep], classes
