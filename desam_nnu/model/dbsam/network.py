"""DB-SAM's network as the released configuration builds it (``db_sam_plus_model_params.yaml``): SAM's ViT
(frozen) whose token stream is rewritten after each of its four stages by two deformable-attention blocks
over a five-level pyramid (the ViT map and the conv branch's four maps, all 64 x 64), the maps fused
(:class:`FeatureFusion`), then SAM's neck, prompt encoder and mask decoder (trainable), box-prompted.

The paper's figure (channel attention after each stage, two-way cross-attention) is the release's
``TwoBranchImagePyramidAdapter``, which no released configuration uses; this is the configured one.
"""
from __future__ import annotations

from functools import partial
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder
from timm.layers import trunc_normal_
from torch import Tensor, nn

from ..frozen_norms import keep_frozen_norms_in_eval
from .conv_branch import GRID, WIDTHS, ConvBranch
from .deform_attn import MSDeformAttn, MSDeformCrossAttnBlock
from .fusion import FeatureFusion

INTERACTIONS: Tuple[Tuple[int, int], ...] = ((0, 2), (3, 5), (6, 8), (9, 11))  # ViT blocks per stage, inclusive


def vit_stages(depth: int) -> Tuple[Tuple[int, int], ...]:
    """The ViT's blocks in four stages of equal length (ViT-B's 12: :data:`INTERACTIONS`, the official)."""
    if depth % 4:
        raise ValueError(f"DB-SAM splits the ViT into four stages: its depth {depth} is not a multiple of 4")
    q = depth // 4
    return tuple((i * q, (i + 1) * q - 1) for i in range(4))
PIXEL_MEAN, PIXEL_STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)


class PyramidAdapter(nn.Module):
    """The official ``FourBranchImagePyramidAdapter`` (key layout and initialisation): the conv branch,
    ``self_attn_blocks`` and ``self_attn_blocks1`` (one of each per stage), ``level_embed`` (added to the
    conv maps only), ``aggregation`` and ``norm``."""

    def __init__(self, vit_embed_dim: int = 768, num_heads: int = 12, n_points: int = 4, attn_drop: float = 0.1,
                 proj_drop: float = 0.1, drop_path_attn: float = 0.3, drop_path_ffn: float = 0.3,
                 expand_ratio: float = 4.0, fusion_drop_path: float = 0.3, antialias: bool = True,
                 interactions: Sequence[Tuple[int, int]] = INTERACTIONS, grid: int = GRID,
                 conv_widths: Sequence[int] = WIDTHS) -> None:
        super().__init__()
        d = vit_embed_dim
        self.interactions = tuple(tuple(i) for i in interactions)
        self.spatial_prior_module = ConvBranch(3, d, (1, 2, 3, 4), layer_norm=True, antialias=antialias, grid=grid,
                                               widths=conv_widths)
        block = partial(MSDeformCrossAttnBlock, d, num_heads, 5, n_points, attn_drop, proj_drop, drop_path_attn,
                        drop_path_ffn, expand_ratio, query_norm=True, ffn_pre_norm=True)
        self.self_attn_blocks = nn.ModuleList(block() for _ in self.interactions)
        self.self_attn_blocks1 = nn.ModuleList(block() for _ in self.interactions)
        self.norm = nn.LayerNorm(d)
        self.level_embed = nn.Parameter(torch.zeros(4, d))
        self.aggregation = FeatureFusion(d, num_conv=5, drop_path=fusion_drop_path)
        self.apply(init_weights)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m._reset_parameters()


def init_weights(m: nn.Module) -> None:
    """The official adapter's initialisation: Linear truncated normal (std 0.02), norms 1 / 0, convolutions
    He-normal over fan-out."""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.constant_(m.bias, 0)
    elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
        nn.init.constant_(m.weight, 1.0)
        nn.init.constant_(m.bias, 0)
    elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        m.weight.data.normal_(0, (2.0 / fan_out) ** 0.5)
        if m.bias is not None:
            m.bias.data.zero_()


class DBSAMEncoder(ImageEncoderViT):
    """SAM's ViT with the adapter as ``adapter`` (the official ``AdaptedViTEncoder``'s keys). Its blocks'
    LayerNorms keep PyTorch's eps 1e-5, as the official builds them (SAM's own: 1e-6)."""

    def __init__(self, adapter: PyramidAdapter, **vit: object) -> None:
        super().__init__(**vit)
        self.adapter = adapter

    def forward(self, x: Tensor) -> Tensor:
        """x [B, 3, S, S] normalised -> the adapted image embedding [B, 256, S/16, S/16] (after the neck)."""
        a = self.adapter
        v = self.patch_embed(x)  # [B, H, W, C]
        if self.pos_embed is not None:
            v = v + self.pos_embed
        conv = a.spatial_prior_module(x)
        maps = [(conv[f"c{i + 1}"] + a.level_embed[i]).permute(0, 3, 1, 2) for i in range(4)]
        for stage, (first, last) in enumerate(a.interactions):
            for blk in self.blocks[first:last + 1]:
                v = blk(v)
            levels = [v.permute(0, 3, 1, 2)] + maps  # NCHW [B, C, H, W]: the ViT's map, then the four conv maps
            levels = a.self_attn_blocks[stage](levels, levels)
            levels = a.self_attn_blocks1[stage](levels, levels)
            v, maps = levels[0].permute(0, 2, 3, 1), levels[1:]
        v = a.aggregation(v, [m.permute(0, 2, 3, 1) for m in maps])
        return self.neck(a.norm(v).permute(0, 3, 1, 2))


class DBSAM(nn.Module):
    """The network: ``image_encoder`` (:class:`DBSAMEncoder`, or :class:`~.tinyvit.DBSAMTinyViT` on medsam_lite),
    SAM's ``prompt_encoder`` and ``mask_decoder``.

    The official is class-agnostic: a box in, one mask out. With ``num_classes`` C > 1 (ours), a box is decoded
    for one class: that class's ``class_embed`` row is added to the box's two corner tokens. The rows start at
    zero, so every class starts as the official network, and a box over the whole image (the automatic mode)
    can still tell the classes apart once trained. With C = 1 there is no ``class_embed``: the official keys."""

    family = "dbsam"

    def __init__(self, image_encoder: nn.Module, prompt_encoder: PromptEncoder, mask_decoder: MaskDecoder,
                 backbone: str = "vit_b", num_classes: int = 1, pixel_mean: Sequence[float] = PIXEL_MEAN,
                 pixel_std: Sequence[float] = PIXEL_STD) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.image_encoder, self.prompt_encoder, self.mask_decoder = image_encoder, prompt_encoder, mask_decoder
        self.backbone, self.image_size, self.num_classes = backbone, image_encoder.img_size, num_classes
        self.class_embed = nn.Embedding(num_classes, prompt_encoder.embed_dim) if num_classes > 1 else None
        if self.class_embed is not None:
            nn.init.zeros_(self.class_embed.weight)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> "DBSAM":
        super().train(mode)
        keep_frozen_norms_in_eval(self)  # the frozen TinyViT's BatchNorms keep LiteMedSAM's statistics
        return self

    def encode(self, images: Tensor) -> Tensor:
        """images [B, 3, S, S], RGB in 0..255 (normalised with the backbone's pixel mean and std: SAM's, or 0..1
        for LiteMedSAM) -> the adapted image embedding [B, 256, h, w] (S/16 on the ViTs, S/4 on medsam_lite)."""
        return self.image_encoder((images - self.pixel_mean) / self.pixel_std)

    def decode(self, embeddings: Tensor, boxes: Tensor, classes: Optional[Tensor] = None) -> Tensor:
        """embeddings [B, 256, h, w]; boxes [B, 4] (x0, y0, x1, y1 in input pixels; the official, one box per
        image) or [B, K, 4]; classes [B, K] (0-based class of each box; None: no class embedding, the official)
        -> mask logits [B, K, 4 h, 4 w] (K = 1 for [B, 4] boxes), one mask per box (no multimask)."""
        boxes = boxes[:, None] if boxes.ndim == 2 else boxes
        if classes is not None and self.class_embed is None and bool((classes != 0).any()):
            raise ValueError("this DB-SAM has one class: classes must be 0 or None")
        out, image_pe = [], self.prompt_encoder.get_dense_pe()  # [1, 256, h, w], the same for every image
        for i, emb in enumerate(embeddings):
            sparse, dense = self.prompt_encoder(points=None, boxes=boxes[i], masks=None)  # [K, 2, 256], [K, 256, h, w]
            if classes is not None and self.class_embed is not None:
                sparse = sparse + self.class_embed(classes[i])[:, None]
            masks, _ = self.mask_decoder(image_embeddings=emb[None], image_pe=image_pe,
                                         sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                         multimask_output=False)
            out.append(masks[:, 0])
        return torch.stack(out)

    def whole_image_boxes(self, batch: int) -> Tuple[Tensor, Tensor]:
        """The automatic mode's prompts: per image, one box over the whole input for each class: boxes
        [B, C, 4], classes [B, C]."""
        dev = self.pixel_mean.device
        box = torch.tensor([0.0, 0.0, float(self.image_size), float(self.image_size)], device=dev)
        classes = torch.arange(self.num_classes, device=dev)
        return box.expand(batch, self.num_classes, 4), classes.expand(batch, self.num_classes)

    def forward(self, images: Tensor, boxes: Optional[Tensor] = None, classes: Optional[Tensor] = None,
                low_res: bool = True) -> Tensor:
        """images [B, 3, S, S] in 0..255; boxes [B, 4] -> the official low-resolution mask logits [B, 1, 4h, 4w];
        boxes [B, K, 4] with classes [B, K] -> [B, K, 4h, 4w]; boxes None: the automatic mode (a whole-image box
        per class) -> [B, C, 4h, 4w]. ``low_res`` False: resized to the input, [.., S, S]."""
        if boxes is None:
            boxes, classes = self.whole_image_boxes(images.shape[0])
        logits = self.decode(self.encode(images), boxes, classes)
        if low_res or logits.shape[-1] == self.image_size:
            return logits
        return F.interpolate(logits, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)


def trainable_parameters(net: DBSAM) -> List[nn.Parameter]:
    """What the official trains: the adapter and the neck, the prompt encoder and the mask decoder (the ViT, or
    TinyViT, stays frozen); the class embedding with them."""
    keep: List[nn.Parameter] = []
    for name, p in net.named_parameters():
        frozen = name.startswith("image_encoder.") and not name.startswith(("image_encoder.adapter.",
                                                                            "image_encoder.neck."))
        p.requires_grad_(not frozen)
        if not frozen:
            keep.append(p)
    return keep

