"""MaskSAM's network for a 3D patch (official ``SAMAdapter_2024_ACDC_Patch1024_TQReshape``, bxie9/MaskSAM
commit c6860c5, ``nnunetv2/sam/sam_model_2024_acdc_patch1024_tqreshape.py``): a learned 3D stem upsamples the
patch to SAM's input; the slice-adapted ViT encodes every slice; a 3D conv decoder over its four global blocks
and neck (the prompt generator) predicts, per slice and query, an auxiliary mask, a box and a classifier
feature; SAM's prompt encoder and the classifier mask decoder turn each query's box and mask into a mask and
C + 1 class logits. The semantic output is sum over queries of softmax(class)[:C] * sigmoid(mask).

Attribute names are the official ones, so its state dicts load key for key. Official behaviours that change
numbers, kept (each tested against the official code):

- the skip branches for the second, third and fourth global blocks from the end are ONE module (shared weights,
  three key copies in the state dict);
- a mask's box is (min x / w, min y / h, max x / w, max y / h) of its pixels (no +1), and (0, 0, 0, 0) when the
  mask is empty; the prompt box is the mean of that and the regressed box, floored in patch pixels, then scaled
  to SAM's input;
- the classifier feature is a (sqrt C_t x sqrt C_t) pooled map flattened into the transformer's C_t channels;
- masks come back through SAM's ``postprocess_masks`` (up to SAM's input, then down to the patch: not the
  identity).
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from dynamic_network_architectures.building_blocks.simple_conv_blocks import StackedConvBlocks
from segment_anything.utils.transforms import ResizeLongestSide
from torch import Tensor, nn

from ..frozen_norms import keep_frozen_norms_in_eval
from .decoder import ClassifierMaskDecoder, SlicePromptEncoder
from .encoder import SliceAdaptedViT

# the plans' 3D conv blocks as the official wrapper builds them (nnU-Net's defaults)
CONV = dict(conv_op=nn.Conv3d, conv_bias=True, norm_op=nn.InstanceNorm3d,
            norm_op_kwargs={"eps": 1e-5, "affine": True}, dropout_op=None, dropout_op_kwargs=None,
            nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, nonlin_first=False)
UP = (1, 2, 2)  # in-plane x2, slices kept


def _convs(n: int, cin: int, cout: int, kernel: Sequence[int]) -> StackedConvBlocks:
    return StackedConvBlocks(n, CONV["conv_op"], cin, cout, kernel, 1, CONV["conv_bias"], CONV["norm_op"],
                             CONV["norm_op_kwargs"], None, None, CONV["nonlin"], CONV["nonlin_kwargs"], False)


def _up(cin: int, cout: int) -> nn.ConvTranspose3d:
    return nn.ConvTranspose3d(cin, cout, UP, UP, bias=CONV["conv_bias"])


class SliceAdaptedSam(nn.Module):
    """The official ``sam_model``'s three parts, under its key names."""

    def __init__(self, image_encoder: SliceAdaptedViT, prompt_encoder: SlicePromptEncoder,
                 mask_decoder: ClassifierMaskDecoder) -> None:
        super().__init__()
        self.image_encoder, self.prompt_encoder, self.mask_decoder = image_encoder, prompt_encoder, mask_decoder


def mask_boxes(masks: Tensor) -> Tensor:
    """``masks`` [N, Q, H, W] (0/1) -> [N, Q, 2, 2]: ((min x / W, min y / H), (max x / W, max y / H)) of the
    nonzero pixels, zeros for an empty mask (the official box of a mask, vectorised)."""
    n, q, h, w = masks.shape
    cols, rows = masks.ne(0).any(dim=2), masks.ne(0).any(dim=3)  # [N, Q, W], [N, Q, H]

    def first_last(hit: Tensor) -> Tuple[Tensor, Tensor]:
        size = hit.shape[-1]
        first = hit.float().argmax(dim=-1)
        last = size - 1 - hit.flip(-1).float().argmax(dim=-1)
        return first.float(), last.float()

    x0, x1 = first_last(cols)
    y0, y1 = first_last(rows)
    boxes = torch.stack([torch.stack([x0 / w, y0 / h], -1), torch.stack([x1 / w, y1 / h], -1)], dim=2)
    return boxes * cols.any(dim=-1)[..., None, None]


class MaskSAM(nn.Module):
    """``forward(x [B, C_in, T, H, W])`` -> per-class probabilities [B, C, T, H, W]; :meth:`outputs` -> the
    training outputs (the official deep-supervision dict), each per slice in (volume, slice) order:
    ``pred_aux_masks`` [B*T, Q, H, W] (probabilities), ``pred_aux_bboxes`` [B*T, Q, 4] (x0, y0, x1, y1 in 0..1),
    ``pred_logits`` [B*T, Q, C + 1], ``pred_masks`` [B*T, Q, H, W] (logits).

    The layout is the official ACDC one: the stem upsamples in-plane by ``image_size / patch`` with two
    transposed convolutions (x4: a 256 px patch into SAM's 1024), and the prompt generator goes up from the
    token grid to the patch in two x2 stages, so the patch is 4x the token grid (``patch = image_size / 4``).
    """

    def __init__(self, sam: SliceAdaptedSam, input_channels: int, num_classes: int, patch: Tuple[int, int],
                 num_queries: int = 8, kernel: Sequence[int] = (3, 3, 3), convs_per_stage: int = 2,
                 widths: Tuple[int, int, int] = (256, 128, 128)) -> None:
        super().__init__()
        self.sam_model, self.num_classes, self.num_queries, self.patch = sam, num_classes, num_queries, tuple(patch)
        encoder = sam.image_encoder
        self.image_size, self.num_frames = encoder.img_size, encoder.num_frames
        self._check_layout()
        token_dim = sam.mask_decoder.transformer_dim
        self.classifier_pool = int(round(token_dim ** 0.5))
        if self.classifier_pool ** 2 != token_dim:
            raise ValueError(f"the classifier feature is a square pooled map of {token_dim} cells: not a square")
        self.first_conv = self._stem(input_channels)
        pooled = self._pooled_channels(widths)
        # registered in the official order: a state dict's copies of the shared skip load in turn, the last wins
        self.bbox_conv = StackedConvBlocks(1, nn.Conv3d, pooled, num_queries, 1, 1, False, CONV["norm_op"],
                                           CONV["norm_op_kwargs"], None, None, nn.Sigmoid, None, False)
        self.residual_classifier = StackedConvBlocks(1, nn.Conv3d, pooled, num_queries, 3, 1, True, CONV["norm_op"],
                                                     CONV["norm_op_kwargs"], None, None, nn.GELU, None, False)
        self._build_prompt_generator(kernel, convs_per_stage, widths)
        self.resize = ResizeLongestSide(self.image_size)

    def _check_layout(self) -> None:
        encoder = self.sam_model.image_encoder
        grid = encoder.img_size // encoder.patch_embed.proj.kernel_size[0]
        if self.patch != (4 * grid, 4 * grid) or encoder.img_size != 4 * self.patch[0]:
            raise ValueError(f"the ACDC layout needs a patch of 4x the token grid and SAM's input of 4x the patch; "
                             f"got patch {self.patch}, grid {grid}, input {encoder.img_size}")

    def _pooled_channels(self, widths: Tuple[int, int, int]) -> int:
        """Channels of the five decoder stages' pooled features (the box head's and classifier's input)."""
        neck, mid, top = widths
        return neck + mid + 3 * top

    def _stem(self, input_channels: int) -> nn.Sequential:
        """The official stem: x4 in-plane (two transposed convolutions), then to SAM's three channels."""
        return nn.Sequential(
            _convs(1, input_channels, 16, (3, 3, 3)), _up(16, 16), nn.InstanceNorm3d(16), nn.GELU(),
            _up(16, 32), nn.InstanceNorm3d(32), nn.GELU(), _convs(1, 32, 32, (3, 3, 3)), _convs(1, 32, 3, (3, 3, 3)))

    def _build_prompt_generator(self, kernel: Sequence[int], convs_per_stage: int,
                                widths: Tuple[int, int, int]) -> None:
        encoder = self.sam_model.image_encoder
        neck, mid, top = widths
        n = convs_per_stage - 1  # the official's n_conv - 1 (StackedConvBlocks builds at least one)
        vit = encoder.embed_dim
        self.image_decoder_stages = nn.ModuleList([
            _convs(convs_per_stage, encoder.neck[0].out_channels, neck, kernel), _convs(n, 2 * mid, mid, kernel),
            _convs(n, 2 * top, top, kernel)])
        self.image_decoder_stages_first = nn.ModuleList([_convs(n, 2 * top, top, kernel)])
        self.image_decoder_stages_second = nn.ModuleList([_convs(n, 2 * top, top, kernel)])
        self.image_decoder_transpconvs = nn.ModuleList([_up(neck, mid), _up(mid, top)])
        self.image_decoder_seg_layers = nn.ModuleList([nn.Conv3d(top, self.num_queries, 1, 1, 0, bias=True)])
        shared = [_up(vit, top), _convs(n, top, top, kernel), _up(top, top), _convs(n, top, top, kernel)]
        self.image_decoder_skips = nn.ModuleList([nn.Sequential(_up(vit, mid), _convs(n, mid, mid, kernel)),
                                                  nn.Sequential(*shared)])
        self.image_decoder_skips_first = nn.ModuleList([nn.Sequential(*shared)])  # the same modules (official)
        self.image_decoder_skips_second = nn.ModuleList([nn.Sequential(*shared)])

    def train(self, mode: bool = True) -> "MaskSAM":
        super().train(mode)
        keep_frozen_norms_in_eval(self)  # medsam_lite: the frozen TinyViT's BatchNorms keep LiteMedSAM's statistics
        return self

    def _pooled(self, stages: List[Tensor], t: int) -> Tuple[Tensor, Tensor]:
        """The five decoder stages' features pooled for the box head [B, 768, T, 2, 2] and the classifier
        [B, 768, T, p, p]."""
        p = self.classifier_pool
        return (torch.cat([F.adaptive_avg_pool3d(s, (t, 2, 2)) for s in stages], dim=1),
                torch.cat([F.adaptive_avg_pool3d(s, (t, p, p)) for s in stages], dim=1))

    def _prompt_generator(self, levels: List[Tensor], t: int) -> Tuple[Tensor, Tensor, Tensor]:
        """The encoder's ``[g1, g2, g3, g4, neck]`` ([B*T, C, h, w]) -> auxiliary mask logits [B, Q, T, H, W] and
        the pooled box [B, 768, T, 2, 2] and classifier [B, 768, T, p, p] features of the five decoder stages."""
        vol = [lv.reshape(-1, t, *lv.shape[1:]).transpose(1, 2) for lv in levels]  # [B, C, T, h, w]
        x = self.image_decoder_stages[0](vol[4])
        stages = [x]
        x = self.image_decoder_stages[1](torch.cat([self.image_decoder_transpconvs[0](x),
                                                    self.image_decoder_skips[0](vol[3])], dim=1))
        stages.append(x)
        x = self.image_decoder_stages[2](torch.cat([self.image_decoder_transpconvs[1](x),
                                                    self.image_decoder_skips[1](vol[2])], dim=1))
        stages.append(x)
        x = self.image_decoder_stages_second[0](torch.cat([x, self.image_decoder_skips_second[0](vol[1])], dim=1))
        stages.append(x)
        x = self.image_decoder_stages_first[0](torch.cat([x, self.image_decoder_skips_first[0](vol[0])], dim=1))
        stages.append(x)
        return (self.image_decoder_seg_layers[0](x), *self._pooled(stages, t))

    def outputs(self, x: Tensor) -> Dict[str, Tensor]:
        b, _, t, h, w = x.shape
        if (h, w) != self.patch:
            raise ValueError(f"a patch of {h} x {w} into a MaskSAM built for {self.patch[0]} x {self.patch[1]}")
        levels = self.sam_model.image_encoder(self.first_conv(x))
        seg, box_features, class_features = self._prompt_generator(levels, t)
        q = self.num_queries
        aux = torch.sigmoid(seg).transpose(1, 2).reshape(b * t, q, h, w)
        binary = (aux > 0.5).to(x.dtype)
        cells = self.bbox_conv(box_features).transpose(1, 2).reshape(b * t, q, 2, 2)
        corner = cells[:, :, 0:1]  # ((x0, y0),) and the fractions of the rest taken by the box, (px, py)
        regressed = torch.cat([corner, corner + (1 - corner) * cells[:, :, 1:2]], dim=2)
        boxes = (regressed + mask_boxes(binary)) / 2  # [B*T, Q, 2, 2]
        # floored in patch pixels: no gradient reaches the box head through the prompt (as in the official)
        prompt = torch.floor(boxes * torch.tensor([w, h], dtype=boxes.dtype, device=boxes.device)).detach()
        prompt = self._prompt_boxes(prompt.reshape(b * t * q, 4), h, w).to(x.dtype)
        classifier = self.residual_classifier(class_features)  # [B, Q, T, p, p]
        classifier = classifier.transpose(1, 2).reshape(b * t * q, 1, -1)
        pe = self.sam_model.prompt_encoder
        dense_mask = F.interpolate(binary.reshape(b * t * q, 1, h, w), size=pe.mask_input_size, mode="nearest")
        sparse, dense = pe(points=None, boxes=prompt, masks=dense_mask)
        low_res, _, logits = self.sam_model.mask_decoder(
            image_embeddings=levels[-1], image_pe=self._dense_pe(b * t), sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense, multimask_output=False, classifier_outputs=classifier)
        masks = self._masks_at_patch(low_res, b, t, h, w)
        return {"pred_aux_masks": aux, "pred_aux_bboxes": boxes.reshape(b * t, q, 4),
                "pred_logits": logits.reshape(b * t, q, -1), "pred_masks": masks.reshape(b * t, q, h, w)}

    def _prompt_boxes(self, boxes: Tensor, h: int, w: int) -> Tensor:
        """Floored patch-pixel boxes [N, 4] -> SAM's input frame (ACDC: scaled from the patch to SAM's input)."""
        return self.resize.apply_boxes_torch(boxes, (h, w))

    def _dense_pe(self, batch: int) -> Tensor:
        """SAM's dense positional encoding plus the slice embedding, [B*T, C, grid, grid]."""
        return self.sam_model.prompt_encoder.slice_dense_pe(batch)

    def _masks_at_patch(self, low_res: Tensor, b: int, t: int, h: int, w: int) -> Tensor:
        """The decoder's masks [B*T*Q, 1, 4 grid, 4 grid] -> [B*T*Q, 1, h, w] (ACDC: SAM's ``postprocess_masks``,
        up to SAM's input, then down to the patch)."""
        masks = F.interpolate(low_res, (self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return F.interpolate(masks, (h, w), mode="bilinear", align_corners=False)

    def semantic(self, outputs: Dict[str, Tensor], volumes: int) -> Tensor:
        """:meth:`outputs` -> [B, C, T, H, W]: sum over queries of softmax(class)[:C] * sigmoid(mask)."""
        probs = torch.einsum("nqc,nqhw->nchw", outputs["pred_logits"].softmax(-1)[..., :-1],
                             outputs["pred_masks"].sigmoid())
        return probs.reshape(volumes, -1, *probs.shape[1:]).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.semantic(self.outputs(x), x.shape[0])
