"""DAPSAM's network (Wei et al., wkklavis/DAPSAM, ``prostate/segment_anything``): SAM's ViT with two
adapters per block, a prototype prompt generator in place of user prompts, and SAM's mask decoder
with one mask token per class. Prompt-free: ``net(images)`` gives every class's logits.

Written from reading the official code (commit c7fd62e), not copied. Module names follow the
official state-dict layout, so an official checkpoint loads with no key mapping:

    image_encoder.{patch_embed, pos_embed, blocks.i.{norm1, attn, norm2, mlp, channel_adapter.D_fc1/D_fc2},
                   neck, l_adapter.{embedding_generator, lightweight_mlp_i.0/.2}}
    prompt_generator.{memory_bank.weight, pe_layer.positional_encoding_gaussian_matrix, fuse_conv}
    mask_decoder.*   (segment_anything's MaskDecoder, num_classes mask tokens)

Shapes for ViT-B at 384 px: tokens [B, 24, 24, 768]; neck [B, 256, 24, 24]; low-res logits
[B, C, 96, 96]; masks [B, C, 384, 384]. The official's quirks are reproduced on purpose, because its
weights were trained with them; each is named where it happens.
"""
from __future__ import annotations

from typing import Any, Dict, List

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Block, ImageEncoderViT, window_partition, window_unpartition
from segment_anything.modeling.mask_decoder import MaskDecoder
from segment_anything.modeling.prompt_encoder import PositionEmbeddingRandom
from torch import Tensor, nn

from ..frozen_norms import keep_frozen_norms_in_eval

ADAPTER_REDUCTION = 4  # both adapters: D -> D / 4 -> D (768 -> 192 -> 768 on ViT-B)
BLOCK_ADAPTER_SCALE = 0.5  # the block adapter's output, added beside the MLP
LADAPTER_INPUT_SCALE = 0.5  # the LAdapter reads 0.5 x + E


def gate_last_axis(x: Tensor) -> Tensor:
    """The official's parameter-free ChannelFilter, which treats the LAST axis as channels:
    x * sigmoid(max + mean over axes 1 and 2). x: [B, A1, A2, K] -> the same shape."""
    pooled = x.amax(dim=(1, 2), keepdim=True) + x.mean(dim=(1, 2), keepdim=True)  # [B, 1, 1, K]
    return x * torch.sigmoid(pooled)


class BlockAdapter(nn.Module):
    """Beside a block's MLP: gate(norm2(x) + E) -> D/4 -> GELU -> D (no skip connection)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.D_fc1 = nn.Linear(dim, dim // ADAPTER_REDUCTION)
        self.act = nn.GELU()
        self.D_fc2 = nn.Linear(dim // ADAPTER_REDUCTION, dim)

    def forward(self, xn: Tensor, embedding: Tensor) -> Tensor:
        """xn: norm2(x) [B, H, W, D]; embedding: E [B, D, H, W] -> [B, H, W, D]. Here the gate is the
        intended per-channel one (statistics over H and W)."""
        return self.D_fc2(self.act(self.D_fc1(gate_last_axis(xn + embedding.permute(0, 2, 3, 1)))))


class LAdapter(nn.Module):
    """One embedding generator (run once, on patch tokens + positions) and one prompt MLP per block.

    ``official_layout`` reproduces the official's two layout quirks (below), which its weights were
    trained with; our TinyViT extension (``tinyvit.py``), which has no official weights, sets it False
    and reads tokens and gates channels as the paper describes."""

    def __init__(self, dim: int, depth: int, official_layout: bool = True) -> None:
        super().__init__()
        self.official_layout = official_layout
        self.embedding_generator = nn.Linear(dim, dim)
        for i in range(depth):
            hidden = dim // ADAPTER_REDUCTION
            self.add_module(f"lightweight_mlp_{i}", nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02, a=-2.0, b=2.0)
                nn.init.zeros_(m.bias)

    def init_embeddings(self, x: Tensor) -> Tensor:
        """x [B, H, W, D] -> E [B, D, H, W]. Quirk: the official reshapes the channels-last tensor as if
        it were channels-first before the linear layer, so its rows are not tokens; kept, as its
        weights expect it."""
        b, h, w, d = x.shape
        if self.official_layout:
            rows = x.reshape(b, d, h * w).transpose(1, 2)  # [B, HW, D], scrambled as the official's
        else:
            rows = x.reshape(b, h * w, d)  # [B, HW, D], the tokens
        return self.embedding_generator(rows).transpose(1, 2).reshape(b, d, h, w)

    def forward(self, i: int, x: Tensor, embedding: Tensor) -> Tensor:
        """Block i's prompt [B, H, W, D] from x [B, H, W, D] and E [B, D, H, W]. Quirk: the official hands
        its channels-first tensor to the channels-last filter, so the gate runs over W, with statistics
        over D and H."""
        b, h, w, d = x.shape
        u = LADAPTER_INPUT_SCALE * x.permute(0, 3, 1, 2) + embedding  # [B, D, H, W]
        if self.official_layout:
            gated = gate_last_axis(u)
        else:  # the per-channel gate: statistics over H and W
            gated = gate_last_axis(u.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        rows = gated.reshape(b, d, h * w).transpose(1, 2)  # [B, HW, D], tokens in (h, w) order
        return getattr(self, f"lightweight_mlp_{i}")(rows).reshape(b, h, w, d)


def adapted_block_forward(blk: Block, x: Tensor, embedding: Tensor) -> Tensor:
    """SAM's Block.forward with the block adapter beside the MLP: x + mlp(n2) + 0.5 adapter(n2, E).
    segment_anything's Block has no seam between attention and MLP, so its few lines are composed
    here from its own modules. x: [B, H, W, D] -> [B, H, W, D]."""
    shortcut = x
    x = blk.norm1(x)
    if blk.window_size > 0:
        h, w = x.shape[1], x.shape[2]
        x, pad_hw = window_partition(x, blk.window_size)
    x = blk.attn(x)
    if blk.window_size > 0:
        x = window_unpartition(x, blk.window_size, pad_hw, (h, w))
    x = shortcut + x
    xn = blk.norm2(x)
    return x + blk.mlp(xn) + BLOCK_ADAPTER_SCALE * blk.channel_adapter(xn, embedding)


class DAPSAMEncoder(ImageEncoderViT):
    """SAM's ViT with DAPSAM's adapters; the state-dict keys are the official ``image_encoder.*``."""

    def __init__(self, **vit_kwargs: Any) -> None:
        super().__init__(**vit_kwargs)
        dim = vit_kwargs["embed_dim"]
        for blk in self.blocks:
            blk.add_module("channel_adapter", BlockAdapter(dim))
        self.l_adapter = LAdapter(dim, len(self.blocks))

    def forward(self, images: Tensor) -> Tensor:
        """images [B, 3, S, S] -> neck features [B, 256, S/16, S/16]."""
        x = self.patch_embed(images) + self.pos_embed  # [B, S/16, S/16, D]
        embedding = self.l_adapter.init_embeddings(x)  # E, shared by every block
        for i, blk in enumerate(self.blocks):
            x = x + self.l_adapter(i, x, embedding)
            x = adapted_block_forward(blk, x, embedding)
        return self.neck(x.permute(0, 3, 1, 2))


class PrototypePromptGenerator(nn.Module):
    """The dense prompt from the image alone: pooled prototype -> read from a learned memory ->
    cosine-similarity map -> 1x1 conv over [features, memory read, similarity] (2C + 1 -> C)."""

    def __init__(self, grid: int, embed_dim: int = 256, memory_slots: int = 256) -> None:
        super().__init__()
        self.grid = grid  # the token grid (the official hard-codes 24, i.e. 384 px)
        self.memory_bank = nn.Linear(embed_dim, memory_slots, bias=False)  # weight [M, C], the official's memory
        bound = embed_dim ** -0.5
        nn.init.uniform_(self.memory_bank.weight, -bound, bound)
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        self.fuse_conv = nn.Conv2d(2 * embed_dim + 1, embed_dim, 1)

    def get_dense_pe(self) -> Tensor:
        """[1, C, grid, grid]: SAM's random-Fourier positions of the token grid. The official's
        Gaussian matrix is its own (random at init, saved with the model), not SAM's."""
        return self.pe_layer((self.grid, self.grid)).unsqueeze(0)

    def forward(self, features: Tensor) -> Tensor:
        """features [B, C, h, w] -> dense prompt [B, C, h, w]."""
        prototype = (F.adaptive_avg_pool2d(features, 1) + F.adaptive_max_pool2d(features, 1)).flatten(1)  # [B, C]
        memory = self.memory_bank.weight  # [M, C]
        read = torch.softmax(prototype @ memory.t(), dim=1) @ memory  # [B, C]: softmax over memory slots
        info = read[:, :, None, None].expand_as(features)
        cos = F.cosine_similarity(info, features, dim=1, eps=1e-7).unsqueeze(1)  # [B, 1, h, w]
        return self.fuse_conv(torch.cat([features, info, cos], dim=1))


class DAPSAM(nn.Module):
    """images [B, 3, S, S], exactly as the official forward receives them (it builds SAM with pixel
    mean 0 and std 1 and z-scores each image and channel beforehand; no further normalisation here)
    -> mask logits [B, num_classes, S, S] (``low_res=True``: the decoder's [B, num_classes, S/4, S/4]
    on the ViTs; on TinyViT, whose tokens are at S/4, the decoder's logits are at S)."""

    def __init__(self, image_encoder: nn.Module, mask_decoder: MaskDecoder, image_size: int,
                 backbone: str, config: Dict[str, Any], embedding_stride: int) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        grid = image_size // embedding_stride  # the encoder's token grid: S/16 for the ViTs, S/4 for TinyViT
        self.prompt_generator = PrototypePromptGenerator(grid, config["prompt_embed_dim"], config["memory_slots"])
        self.mask_decoder = mask_decoder
        self.image_size = image_size
        self.backbone = backbone
        self.config = dict(config)

    @property
    def num_classes(self) -> int:
        return self.mask_decoder.num_mask_tokens

    def trainable_parameter_groups(self) -> Dict[str, List[nn.Parameter]]:
        """What the official trains: the adapters, the prompt generator and the mask decoder (the
        ViT's own weights stay frozen)."""
        adapters = [p for n, p in self.image_encoder.named_parameters() if "adapter" in n]
        return {"adapters": adapters, "prompt_generator": list(self.prompt_generator.parameters()),
                "mask_decoder": list(self.mask_decoder.parameters())}

    def train(self, mode: bool = True) -> "DAPSAM":
        super().train(mode)
        keep_frozen_norms_in_eval(self)  # medsam_lite: the frozen TinyViT's BatchNorms keep LiteMedSAM's statistics
        return self

    def freeze_backbone(self) -> "DAPSAM":
        """requires_grad only on :meth:`trainable_parameter_groups`, as the official after loading SAM."""
        trainable = {id(p) for group in self.trainable_parameter_groups().values() for p in group}
        for p in self.parameters():
            p.requires_grad_(id(p) in trainable)
        return self

    def forward(self, images: Tensor, low_res: bool = False) -> Tensor:
        features = self.image_encoder(images)  # [B, C, S/16, S/16]
        dense = self.prompt_generator(features)  # [B, C, S/16, S/16]
        # as the official: one empty sparse prompt for the whole batch (batch 1); the decoder's tokens
        # stay at batch 1 and SAM's two-way transformer broadcasts them against the B images
        sparse = features.new_empty((1, 0, features.shape[1]))
        logits, _ = self.mask_decoder.predict_masks(features, self.prompt_generator.get_dense_pe(), sparse, dense)
        if low_res:
            return logits
        return F.interpolate(logits, (self.image_size, self.image_size), mode="bilinear", align_corners=False)
