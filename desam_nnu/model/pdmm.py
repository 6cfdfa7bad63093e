"""PDMM, DeSAM's prompt-decoupled mask module: a U-Net-like decoder over the encoder's features.

Structure (module names follow the official ``mask_decoder.pimm.*`` state dict, so its weights
load unchanged; levels are listed deepest first, level ``d`` has ``pdmm_dim // 2**d`` channels):

* ``conv_blocks_context[d]`` (a :class:`ContextBlock`): lifts encoder feature ``d`` to the width
  of level ``d`` and upsamples it ``context_upsamples[d]`` times by 2. Level 0 is at the neck's
  resolution and each level doubles it. Which encoder output feeds which level, and how often
  it is upsampled, is the backbone's :class:`~desam_nnu.model.backbones.FeatureLayout`:

  - SAM ViTs (input S, neck S/16): the outputs of the global-attention blocks but the last
    (deepest first), all at S/16, upsampled 0, 1, 2 times: levels at S/16, S/8, S/4.
  - medsam_lite (TinyViT, neck S/4; see :mod:`desam_nnu.model.tinyvit`): stage 3 (320 ch, S/4)
    as is, stage 0 (128 ch, S/2) as is, stage 0 again upsampled once: levels at S/4, S/2, S.
* ``mask_embedding_fusion``: fuses PRIM's mask embedding (at the neck's resolution, the only
  prompt-dependent input) with the deepest context level.
* ``conv_blocks_localization[u]`` (an :class:`UpBlock`): transposed conv x2, then a residual block
  over ``[upsampled, skip]`` with the context level ``u + 1`` as skip.
* ``seg_outputs[u]``: 1x1 convs to ``num_classes`` logits; the last one gives the output at the
  last level's resolution, S/4 for the ViTs and S for medsam_lite (the earlier ones are
  deep-supervision heads).

Why the split: every context branch depends on the image only. :meth:`PDMM.encode_context` runs
them once per image; :meth:`PDMM.decode` runs the prompt-dependent part for P prompts and
broadcasts the per-image tensors over the prompts. It goes one step further than broadcasting:
wherever the official concatenates ``[per_prompt, per_image]`` before a bias-free convolution,
the convolution is split by input channels and the per-image half is computed once per image
(:meth:`ResSEBlock.forward` with ``shared=``). That is the same linear map, so results match
the official concatenation up to float rounding (checked against the official outputs to 1e-4).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ConvLayer", "SELayer", "ResSEBlock", "ContextBlock", "UpBlock", "PDMM"]


def _select(t: Tensor, index: Optional[Tensor]) -> Tensor:
    """Per-image tensor ``t`` [B, ...] -> per-prompt view: ``t[index]``, or ``t`` itself to
    broadcast (B == 1, or B == P paired one to one) when ``index`` is None."""
    return t if index is None else t.index_select(0, index)


class ConvLayer(nn.Sequential):
    """A bias-free conv (or transposed conv) wrapped so its weight is named ``<name>.conv.weight``,
    as in the official model (which built them with MONAI's ``get_conv_layer``)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, transposed: bool = False
    ) -> None:
        super().__init__()
        if transposed:
            # kernel == stride: exact x``stride`` upsampling, no padding.
            self.add_module("conv", nn.ConvTranspose2d(in_channels, out_channels, kernel_size, stride, bias=False))
        else:
            self.add_module(
                "conv",
                nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=(kernel_size - 1) // 2, bias=False),
            )

    @property
    def weight(self) -> Tensor:
        return self.conv.weight

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        """x: [N, Cin, H, W] -> [N, Cout, H, W] (conv) or [N, Cout, sH, sW] (transposed, stride s)."""
        return self.conv(x)

    def forward_split(self, x: Tensor, shared: Tensor, index: Optional[Tensor]) -> Tensor:
        """Same as ``self(cat([x, shared[index]], 1))`` but convolves ``shared`` once per image.

        x: [P, Cx, H, W] per-prompt input; shared: [B, Cs, H, W] per-image input;
        index: [P] image of each prompt, or None to broadcast. Returns [P, Cout, H, W].
        """
        conv = self.conv
        assert isinstance(conv, nn.Conv2d), "split convolution is only defined for Conv2d"
        cx = x.shape[1]
        w = conv.weight
        per_prompt = F.conv2d(x, w[:, :cx], None, conv.stride, conv.padding)
        per_image = F.conv2d(shared, w[:, cx:], None, conv.stride, conv.padding)
        return per_prompt + _select(per_image, index)


class SELayer(nn.Module):
    """Squeeze-and-excitation channel gating (names ``fc.0`` / ``fc.2`` as in the official)."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)  # official: channels // 16 (all its widths are >= 16)
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        """x: [N, C, H, W] -> [N, C, H, W], each channel scaled by a gate in (0, 1)."""
        gate = self.fc(x.mean(dim=(2, 3)))
        return x * gate[:, :, None, None]


class ResSEBlock(nn.Module):
    """Residual block: conv3x3-IN-LReLU-conv3x3-IN-SE (+ residual, 1x1 conv + IN when the width
    changes) - LReLU. The official ``UnetResSEBlock`` at stride 1.

    ``conv3`` exists even when the width does not change, because the official state dict has it;
    it is unused then, so it is frozen (requires_grad False) to keep DDP and optimisers quiet.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = ConvLayer(in_channels, out_channels, 3)
        self.conv2 = ConvLayer(out_channels, out_channels, 3)
        self.conv3 = ConvLayer(in_channels, out_channels, 1)
        # Instance norm without affine parameters, eps 1e-5 (MONAI's "instance" norm).
        self.norm1 = nn.InstanceNorm2d(out_channels)
        self.norm2 = nn.InstanceNorm2d(out_channels)
        self.norm3 = nn.InstanceNorm2d(out_channels)
        self.lrelu = nn.LeakyReLU(negative_slope=0.01, inplace=True)
        self.se = SELayer(out_channels)
        self.project_residual = in_channels != out_channels
        if not self.project_residual:
            self.conv3.conv.weight.requires_grad_(False)

    def forward(self, x: Tensor, shared: Optional[Tensor] = None, index: Optional[Tensor] = None) -> Tensor:
        """Apply the block to ``cat([x, shared], dim=1)`` without building the concatenation.

        x: [P, Cx, H, W]. shared: None, or [B, Cs, H, W] image-only input whose channels follow
        ``x``'s (Cx + Cs == in_channels); index: [P] LongTensor mapping prompts to images, or None
        to broadcast ``shared`` (B == 1 or B == P). Returns [P, out_channels, H, W].
        """
        if shared is None:
            out = self.conv1(x)
        else:
            out = self.conv1.forward_split(x, shared, index)
        out = self.lrelu(self.norm1(out))
        out = self.se(self.norm2(self.conv2(out)))
        if self.project_residual:
            residual = self.conv3(x) if shared is None else self.conv3.forward_split(x, shared, index)
            residual = self.norm3(residual)
        else:
            residual = x
        return self.lrelu(out + residual)


class ContextBlock(nn.Module):
    """One image-only context branch: a residual block to the level width, then ``num_upsamples``
    x (transposed conv x2, residual block). The official ``PreUpBlock``."""

    def __init__(self, in_channels: int, out_channels: int, num_upsamples: int) -> None:
        super().__init__()
        self.block_init = ResSEBlock(in_channels, out_channels)
        self.residual_block = nn.ModuleList(
            nn.Sequential(ConvLayer(out_channels, out_channels, 2, 2, transposed=True), ResSEBlock(out_channels, out_channels))
            for _ in range(num_upsamples)
        )

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, Cin, h, w] encoder feature -> [B, Cout, h * 2**n, w * 2**n]."""
        x = self.block_init(x)
        for blk in self.residual_block:
            x = blk(x)
        return x


class UpBlock(nn.Module):
    """Decoder step: transposed conv x2 of the per-prompt tensor, then a residual block over
    ``[upsampled, skip]`` where ``skip`` is an image-only context level. The official ``UpBlock``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.input_channels = in_channels
        self.output_channels = out_channels
        self.transp_conv = ConvLayer(in_channels, out_channels, 2, 2, transposed=True)
        self.res_block = ResSEBlock(2 * out_channels, out_channels)

    def forward(self, x: Tensor, skip: Tensor, index: Optional[Tensor] = None) -> Tensor:
        """x: [P, Cin, h, w] per prompt; skip: [B, Cout, 2h, 2w] per image; index: [P] or None
        (broadcast). Returns [P, Cout, 2h, 2w]."""
        return self.res_block(self.transp_conv(x), shared=skip, index=index)


class PDMM(nn.Module):
    """Prompt-decoupled mask module (see the module docstring).

    Args:
        feature_channels: channel width of each encoder feature fed in, deepest first.
        context_upsamples: how many x2 upsamplings each context branch applies, deepest first;
            level ``d + 1`` must end at twice the resolution of level ``d``, and level 0 at the
            mask embedding's resolution.
        mask_embedding_dim: channels of PRIM's mask embedding (SAM's prompt_embed_dim).
        pdmm_dim: width of the deepest level (official: 256); level ``d`` has ``pdmm_dim // 2**d``.
        num_classes: output channels (one sigmoid logit per foreground class).
        deep_supervision: if True, :meth:`decode` returns every seg output, highest resolution first.
    """

    def __init__(
        self,
        feature_channels: Sequence[int],
        context_upsamples: Sequence[int],
        mask_embedding_dim: int,
        pdmm_dim: int = 256,
        num_classes: int = 1,
        deep_supervision: bool = False,
    ) -> None:
        super().__init__()
        if len(feature_channels) != len(context_upsamples) or len(feature_channels) < 2:
            raise ValueError(
                f"PDMM needs >= 2 levels with one upsample count each, got channels {tuple(feature_channels)} "
                f"and upsamples {tuple(context_upsamples)}"
            )
        levels = len(feature_channels)
        self.widths = [pdmm_dim // 2**d for d in range(levels)]
        if self.widths[-1] < 1:
            raise ValueError(f"pdmm_dim={pdmm_dim} is too small for {levels} levels")
        self.num_classes = num_classes
        self.deep_supervision = deep_supervision
        self.conv_blocks_context = nn.ModuleList(
            ContextBlock(c, w, n) for c, w, n in zip(feature_channels, self.widths, context_upsamples)
        )
        self.conv_blocks_localization = nn.ModuleList(
            UpBlock(self.widths[u], self.widths[u + 1]) for u in range(levels - 1)
        )
        self.seg_outputs = nn.ModuleList(
            nn.Conv2d(self.widths[u + 1], num_classes, kernel_size=1, bias=False) for u in range(levels - 1)
        )
        # Official order: cat([mask_embedding, deepest context]).
        self.mask_embedding_fusion = ResSEBlock(mask_embedding_dim + self.widths[0], self.widths[0])

    def encode_context(self, features: Sequence[Tensor]) -> List[Tensor]:
        """Run the image-only context branches once per image.

        features: encoder features feeding PDMM, deepest first, feature ``d`` [B, feature_channels[d], h_d, w_d].
        Returns one tensor per level, level ``d`` [B, pdmm_dim // 2**d, H_d, W_d] with H_{d+1} = 2 H_d.
        """
        if len(features) != len(self.conv_blocks_context):
            raise ValueError(f"PDMM expects {len(self.conv_blocks_context)} features, got {len(features)}")
        return [blk(f) for blk, f in zip(self.conv_blocks_context, features)]

    def decode(
        self, mask_embedding: Tensor, context: Sequence[Tensor], image_index: Optional[Tensor] = None
    ) -> Union[Tensor, List[Tensor]]:
        """Per-prompt part: fuse the mask embedding, then decode up through the context levels.

        mask_embedding: [P, D, h, w] from PRIM (h, w = resolution of context level 0).
        context: from :meth:`encode_context`, per image, batch B.
        image_index: [P] LongTensor, image of each prompt; None means broadcast (B == 1) or
            paired (B == P).
        Returns mask logits [P, num_classes, H, W] at the last level's resolution (1/4 of the
        SAM input for the ViTs, the full input for medsam_lite); with deep_supervision a list of such tensors, highest
        resolution first (official order).
        """
        x = self.mask_embedding_fusion(mask_embedding, shared=context[0], index=image_index)
        seg_outputs = []
        for u, up in enumerate(self.conv_blocks_localization):
            x = up(x, context[u + 1], image_index)
            if self.deep_supervision or u == len(self.conv_blocks_localization) - 1:
                seg_outputs.append(self.seg_outputs[u](x))
        if self.deep_supervision:
            return seg_outputs[::-1]
        return seg_outputs[-1]

    def forward(
        self, mask_embedding: Tensor, features: Sequence[Tensor], image_index: Optional[Tensor] = None
    ) -> Union[Tensor, List[Tensor]]:
        """Both steps: mask_embedding [P, D, h, w], features deepest first with batch B
        (see :meth:`encode_context`), image_index [P] or None. Returns logits [P, C, H, W]."""
        return self.decode(mask_embedding, self.encode_context(features), image_index)
