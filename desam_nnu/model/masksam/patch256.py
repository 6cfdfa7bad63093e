"""MaskSAM's patch-256 variant (official ``SAMAdapter_2024_AMOS_SmallPatch_FinalLayerCNN_TQReshape_Patch256``,
bxie9/MaskSAM commit c6860c5, ``nnunetv2/sam/sam_model_2024_amos_smallpatch_finallayercnn_tqreshape_patch256.py``;
the release's Synapse trainer builds it): the patch goes into SAM as it is, with no upsampling.

Differences from the ACDC layout (:class:`~.network.MaskSAM`), each official:

- the stem keeps the patch's size (two 3 x 3 x 3 convolutions, C_in -> 8 -> 3);
- SAM's ViT is built for 1024 px and fed the 256 px patch: its position embedding is cropped to the top-left
  16 x 16 tokens and its global blocks' relative positions resized;
- the prompt generator goes up from the 16 x 16 tokens to the patch in four x2 stages (widths 256, 128, 128, 64,
  64), each global block's skip upsampled to its stage, with no weights shared; the pooled box and classifier
  features have 640 channels;
- boxes stay in patch pixels (no scaling to SAM's 1024 frame), and the dense positional encoding is that frame's
  top-left quarter (a 16 x 16 grid at (i + 0.5) / 64), so the two agree;
- the decoder's masks (64 x 64) go through a learned 3D ``final_conv``, x4 in-plane, instead of
  ``postprocess_masks``;
- 24 queries by default.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from torch import Tensor, nn

from .network import CONV, MaskSAM, _convs, _up

FEATURES = (64, 64, 128, 128, 256, 256)  # the official image_decoder_features_per_stage, shallowest first
STAGES = 6


class MaskSAM256(MaskSAM):
    """:class:`~.network.MaskSAM` with the patch-256 layout (see the module docstring): ``image_size`` is SAM's
    canvas (1024), the patch is fed at its own size, 16 pixels a token."""

    def _check_layout(self) -> None:
        encoder = self.sam_model.image_encoder
        token = encoder.patch_embed.proj.kernel_size[0]
        grid = self.sam_model.prompt_encoder.image_embedding_size
        square = self.patch[0] == self.patch[1] and not self.patch[0] % (token * 16)
        if not square or tuple(grid) != (self.patch[0] // token,) * 2:
            raise ValueError(f"the patch-256 layout needs a square patch of a multiple of {token * 16} pixels whose "
                             f"token grid the prompt encoder has; got patch {self.patch}, prompt grid {tuple(grid)}")

    def _pooled_channels(self, widths: Tuple[int, int, int]) -> int:
        return sum(FEATURES[-(s + 1)] for s in range(1, STAGES))

    def _stem(self, input_channels: int) -> nn.Sequential:
        return nn.Sequential(_convs(1, input_channels, 8, (3, 3, 3)), _convs(1, 8, 3, (3, 3, 3)))

    def _build_prompt_generator(self, kernel: Sequence[int], convs_per_stage: int,
                                widths: Tuple[int, int, int]) -> None:
        vit, n = self.sam_model.image_encoder.embed_dim, convs_per_stage - 1
        stages, transpconvs, skips = [_convs(convs_per_stage, FEATURES[-1], FEATURES[-2], kernel)], [], []
        for s in range(2, STAGES):  # stage s: x2 from the stage below, the skip x 2^(s - 1) from its global block
            below, width = FEATURES[-s], FEATURES[-(s + 1)]
            transpconvs.append(_up(below, width))
            stages.append(_convs(n, 2 * width, width, kernel))
            skip = [_up(vit, width), _convs(n, width, width, kernel)]
            for _ in range(s - 2):
                skip += [_up(width, width), _convs(n, width, width, kernel)]
            skips.append(nn.Sequential(*skip))
        self.image_decoder_stages = nn.ModuleList(stages)
        self.image_decoder_transpconvs = nn.ModuleList(transpconvs)
        self.image_decoder_seg_layers = nn.ModuleList([nn.Conv3d(FEATURES[0], self.num_queries, 1, 1, 0, bias=True)])
        self.image_decoder_skips = nn.ModuleList(skips)
        q = self.num_queries
        self.final_conv = nn.Sequential(
            _convs(1, q, 64, (3, 3, 3)), _up(64, 64), nn.InstanceNorm3d(64), nn.GELU(), _up(64, 64),
            nn.InstanceNorm3d(64), nn.GELU(), nn.Conv3d(64, q, (3, 3, 3), 1, 1, bias=CONV["conv_bias"]))

    def _prompt_generator(self, levels: List[Tensor], t: int) -> Tuple[Tensor, Tensor, Tensor]:
        vol = [lv.reshape(-1, t, *lv.shape[1:]).transpose(1, 2) for lv in levels]  # [B, C, T, h, w]
        x = self.image_decoder_stages[0](vol[-1])
        stages = [x]
        for s in range(1, len(self.image_decoder_stages)):  # the neck's stage, then g4, g3, g2, g1 as skips
            skip = self.image_decoder_skips[s - 1](vol[-1 - s])
            x = self.image_decoder_stages[s](torch.cat([self.image_decoder_transpconvs[s - 1](x), skip], dim=1))
            stages.append(x)
        return (self.image_decoder_seg_layers[0](x), *self._pooled(stages, t))

    def _prompt_boxes(self, boxes: Tensor, h: int, w: int) -> Tensor:
        return boxes  # patch pixels, embedded in SAM's 1024 frame (official: apply_boxes is commented out)

    def _dense_pe(self, batch: int) -> Tensor:
        frame = self.image_size // self.sam_model.image_encoder.patch_embed.proj.kernel_size[0]
        return self.sam_model.prompt_encoder.slice_dense_pe(batch, frame=(frame, frame))

    def _masks_at_patch(self, low_res: Tensor, b: int, t: int, h: int, w: int) -> Tensor:
        q = self.num_queries
        volume = low_res.reshape(b, t, q, *low_res.shape[-2:]).transpose(1, 2)  # [B, Q, T, 4 grid, 4 grid]
        masks = self.final_conv(volume).transpose(1, 2)  # [B, T, Q, h, w]
        return masks.reshape(b * t * q, 1, h, w)
