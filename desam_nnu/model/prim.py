"""PRIM, DeSAM's prompt-relevant IoU module: SAM's two-way transformer and IoU head.

PRIM keeps SAM's output-token layout (one IoU token, then SAM's 4 mask tokens, then the prompt
tokens) so that SAM's mask-decoder weights and the official DeSAM weights load unchanged. Unlike
SAM it does not upscale masks: its mask output is the transformer's image-side output (the
*mask embedding*, at the neck resolution: 1/16 of the input for the ViTs, 1/4 for medsam_lite's
TinyViT), which PDMM decodes. LiteMedSAM's mask decoder has SAM's sizes (256 wide, 2 layers, IoU
head depth 3), so its transformer, tokens and IoU head load into PRIM unchanged.
SAM's hypernetwork MLPs and output upscaling are therefore absent (the official model still
carries them, unused; :mod:`desam_nnu.model.checkpoints` drops them when importing).

IoU head and classes: SAM's head predicts one IoU per mask token (4 outputs). DeSAM reads
output 0. With ``num_classes = C`` PRIM reads outputs ``0..C-1``, output ``c`` being the IoU of
class ``c``'s mask; the head has ``max(4, C)`` outputs so that ``C <= 4`` keeps SAM's (and the
official's) weight shapes.

Speed: the transformer's attention layers are :class:`~desam_nnu.model.attention.PromptAttention`
(SAM's, with a forward that handles many prompts on one image without materialising broadcasts).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from segment_anything.modeling.mask_decoder import MLP
from segment_anything.modeling.transformer import TwoWayTransformer
from torch import Tensor, nn

from .attention import use_prompt_attention

__all__ = ["PRIM", "SAM_NUM_MASK_TOKENS"]

SAM_NUM_MASK_TOKENS = 4  # SAM: 1 single-mask token + 3 multimask tokens


class PRIM(nn.Module):
    """Prompt-relevant IoU module.

    Args:
        transformer_dim: SAM's prompt embedding width (256 for SAM).
        depth, num_heads, mlp_dim: the two-way transformer's size (SAM: 2, 8, 2048).
        iou_head_depth, iou_head_hidden_dim: IoU MLP size (SAM: 3, 256).
        num_classes: number of predicted IoUs (one per foreground class).
    """

    def __init__(
        self,
        transformer_dim: int = 256,
        depth: int = 2,
        num_heads: int = 8,
        mlp_dim: int = 2048,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
        num_classes: int = 1,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.num_classes = num_classes
        # SAM's transformer; its attention layers compute PRIM's broadcast shapes without copies
        self.transformer = use_prompt_attention(TwoWayTransformer(
            depth=depth, embedding_dim=transformer_dim, num_heads=num_heads, mlp_dim=mlp_dim
        ))
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(SAM_NUM_MASK_TOKENS, transformer_dim)
        self.iou_prediction_head = MLP(
            transformer_dim, iou_head_hidden_dim, max(SAM_NUM_MASK_TOKENS, num_classes), iou_head_depth
        )

    def forward(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
        image_index: Optional[Tensor] = None,
    ) -> Tuple[Tensor, Tensor]:
        """Run the two-way transformer for P prompts.

        image_embeddings: [B, D, h, w] encoder neck output.
        image_pe: [1, D, h, w] dense positional encoding (PromptEncoder.get_dense_pe()).
        sparse_prompt_embeddings: [P, N, D] point/box tokens.
        dense_prompt_embeddings: [1 or P, D, h, w] (DeSAM: the no-mask embedding, batch 1).
        image_index: [P] LongTensor image of each prompt; None: broadcast (B == 1) or paired (B == P).
        Returns mask_embedding [P, D, h, w] (transformer image-side output) and
        iou [P, num_classes] (predicted IoU of each class's mask).
        """
        p = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(p, -1, -1), sparse_prompt_embeddings], dim=1)
        src = image_embeddings if image_index is None else image_embeddings.index_select(0, image_index)
        src = src + dense_prompt_embeddings
        # src keeps batch 1 when all prompts share one image and one dense embedding (DeSAM's
        # inference case). The official repeats it P times; broadcasting instead lets the first
        # transformer layer project the image tokens once for all prompts (same math). From the
        # first image->token attention on, the image side differs per prompt and has batch P.
        _, c, h, w = src.shape
        hs, keys = self.transformer(src, image_pe, tokens)  # image_pe broadcasts too
        if keys.shape[0] != p:  # only with a depth-0 transformer
            keys = keys.expand(p, -1, -1)
        mask_embedding = keys.transpose(1, 2).unflatten(2, (h, w))  # a view: grid mode decodes only a few of them
        iou = self.iou_prediction_head(hs[:, 0, :])[:, : self.num_classes]
        return mask_embedding, iou
