"""MaskSAM on LiteMedSAM's TinyViT (``medsam_lite``): ours, no official counterpart.

The official adapts SAM's ViT, whose blocks share one width and one S/16 token grid, with two slice-mixing adapters
in every block and reads four global blocks. TinyViT's four stages differ in width (128, 160, 320, 320 channels
after each) and grid (S/2, then S/4), and all its attention is windowed. Here each stage's output gets one
:class:`~.adapters.SliceConvAdapter` (the official encoder adapter: a depth-wise 3 x 3 x 3 convolution over slice,
row and column in a quarter-wide bottleneck), and a slice embedding is added to the patch embedding's map, as the
official adds its own after the position embedding. The four stage outputs play the global blocks' part and the
neck stays LiteMedSAM's.

:class:`MaskSAMLite` is the wrapper for it: LiteMedSAM's embedding lies at S/4 (the ViTs': S/16), so the stem
upsamples the patch x2 (not x4: SAM's input is 2x the patch, as DeSAM's medsam_lite plans at 2 input pixels per
voxel) and the prompt generator needs one x2 stage (not two) from the embedding's S/4 = p/2 grid to the patch:
the neck, then stage 3 and stage 2 (upsampled x2), stage 1 (upsampled x2) and stage 0 (already at the patch) join
in turn as the official's skips do, each stage the official's widths (256, 128, 128, 128, 128), so the pooled box
and classifier features have the official 768 channels. The mask decoder's output (S) is resized to the patch as
in the ACDC layout.

Unlike the official adapters, whose random initialisation changes SAM's features from the first step, each stage
adapter's last layer starts at zero: the untrained encoder is LiteMedSAM's, and training starts from its
features. Keys: LiteMedSAM's ``image_encoder.*`` unchanged (its packaged weights load strictly), plus
``temporal_embedding`` and ``stage_adapters.*``.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..tinyvit import TinyViTFeatureEncoder
from .adapters import SliceConvAdapter
from .network import MaskSAM, _convs, _up


class SliceAdaptedTinyViT(TinyViTFeatureEncoder):
    """``forward(images [B, 3, T, S, S])`` (0..1) -> ``[s0, s1, s2, s3, neck]``: the stage outputs ``[B*T, 128,
    S/2, S/2]``, ``[B*T, 160, S/4, S/4]``, ``[B*T, 320, S/4, S/4]`` twice, and LiteMedSAM's embedding ``[B*T, 256,
    S/4, S/4]``, each after its stage's slice adapter; batch in (volume, slice) order."""

    def __init__(self, num_frames: int, img_size: int = 256) -> None:
        super().__init__(img_size, feature_stages=(0, 1, 2, 3))
        self.num_frames = num_frames
        first = self.layers[0].dim  # the patch embedding's width
        self.temporal_embedding = nn.Parameter(torch.zeros(1, num_frames, first))
        self.stage_adapters = nn.ModuleList(SliceConvAdapter(c, num_frames=num_frames) for c in self.stage_channels)
        for adapter in self.stage_adapters:  # ours: the untrained adapters leave LiteMedSAM's features as they are
            nn.init.zeros_(adapter.D_fc2.weight)
            nn.init.zeros_(adapter.D_fc2.bias)

    @property
    def level_channels(self) -> List[int]:
        """Channels of the returned maps, in order."""
        return list(self.stage_channels) + [self.neck[0].out_channels]

    def forward(self, x: Tensor) -> List[Tensor]:  # type: ignore[override]
        b, c, t, h, w = x.shape
        if t != self.num_frames:
            raise ValueError(f"a patch of {t} slices into an encoder built for T = {self.num_frames}")
        x = x.transpose(1, 2).reshape(b * t, c, h, w)
        self._check_input(x)
        x = self.patch_embed(x)  # [B*T, 64, S/2, S/2]
        x = (x.reshape(b, t, *x.shape[1:]) + self.temporal_embedding[0, :, :, None, None]).reshape(x.shape)
        outputs = []
        for i, layer in enumerate(self.layers):
            x = layer(x)  # tokens [B*T, h_i * w_i, C_i]
            rows, cols = self.stage_resolutions[i]
            x = self.stage_adapters[i](x.reshape(b * t, rows, cols, -1)).reshape(x.shape)
            outputs.append(self._tokens_to_map(x, i))
        return outputs + [self.neck(outputs[-1])]


class MaskSAMLite(MaskSAM):
    """:class:`~.network.MaskSAM` on :class:`SliceAdaptedTinyViT` (see the module docstring): the same outputs, with
    a x2 stem and a one-stage prompt generator; SAM's input is 2x the patch."""

    def _check_layout(self) -> None:
        if self.image_size != 2 * self.patch[0] or self.patch[0] != self.patch[1] or self.patch[0] % 8:
            raise ValueError(f"MaskSAM on TinyViT needs a square patch (a multiple of 8) of half SAM's input; got "
                             f"patch {self.patch}, input {self.image_size}")

    def _stem(self, input_channels: int) -> nn.Sequential:
        return nn.Sequential(_convs(1, input_channels, 16, (3, 3, 3)), _up(16, 32), nn.InstanceNorm3d(32), nn.GELU(),
                             _convs(1, 32, 32, (3, 3, 3)), _convs(1, 32, 3, (3, 3, 3)))

    def _build_prompt_generator(self, kernel: Sequence[int], convs_per_stage: int,
                                widths: Tuple[int, int, int]) -> None:
        s0, s1, s2, s3, neck_in = self.sam_model.image_encoder.level_channels
        neck, mid, top = widths
        n = convs_per_stage - 1
        self.lite_stages = nn.ModuleList([_convs(convs_per_stage, neck_in, neck, kernel),
                                          _convs(n, 2 * mid, mid, kernel), _convs(n, 2 * top, top, kernel),
                                          _convs(n, 2 * top, top, kernel), _convs(n, 2 * top, top, kernel)])
        self.lite_up = _up(neck, mid)
        self.lite_skips = nn.ModuleList([  # stage 3, 2, 1 from S/4 up to the patch; stage 0 is there already
            nn.Sequential(_up(s3, mid), _convs(n, mid, mid, kernel)),
            nn.Sequential(_up(s2, top), _convs(n, top, top, kernel)),
            nn.Sequential(_up(s1, top), _convs(n, top, top, kernel)),
            _convs(1, s0, top, kernel)])
        self.lite_seg_layer = nn.Conv3d(top, self.num_queries, 1, 1, 0, bias=True)

    def _prompt_generator(self, levels: List[Tensor], t: int) -> Tuple[Tensor, Tensor, Tensor]:
        vol = [lv.reshape(-1, t, *lv.shape[1:]).transpose(1, 2) for lv in levels]  # [B, C, T, h, w]
        x = self.lite_stages[0](vol[4])
        stages = [x]
        x = self.lite_stages[1](torch.cat([self.lite_up(x), self.lite_skips[0](vol[3])], dim=1))
        stages.append(x)
        for k, level in ((2, 2), (3, 1), (4, 0)):
            x = self.lite_stages[k](torch.cat([x, self.lite_skips[k - 1](vol[level])], dim=1))
            stages.append(x)
        return (self.lite_seg_layer(x), *self._pooled(stages, t))
