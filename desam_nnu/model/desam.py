"""The DeSAM network: SAM's frozen image and prompt encoders, PRIM and PDMM.

DeSAM (Gao et al., MICCAI 2024) decouples SAM's mask decoder into
* PRIM (:mod:`.prim`): SAM's two-way transformer + IoU head. Per prompt it predicts the IoU and a
  *mask embedding* (the transformer's image-side output at the neck resolution);
* PDMM (:mod:`.pdmm`): a U-Net-like decoder over the encoder's intermediate features, which fuses
  the mask embedding in at its deepest level and outputs mask logits at :meth:`DeSAM.mask_size`:
  1/4 of the input for SAM's ViTs, the full input for medsam_lite (TinyViT, neck at 1/4).

Prompt format (all coordinates in input pixels, i.e. in the ``image_size`` frame after resizing,
``(x, y)`` order, as SAM):
* ``points = (coords [P, N, 2] float, labels [P, N])``: N points per prompt, label 1 foreground,
  0 background, -1 padding. ``coords [P, 2]`` with ``labels [P]`` (one point per prompt) and a bare
  ``coords`` tensor (labels all 1) are accepted too.
* ``boxes [P, 4]``: ``x0, y0, x1, y1``. Points and boxes may be combined (same P).
* Batch vs. prompts: ``features`` hold B images, the prompts are P. Prompt ``p`` belongs to image
  ``image_index[p]``. Without ``image_index``: B == 1 means all P prompts are on that image (the
  inference / grid case), B == P pairs prompt ``i`` with image ``i`` (the training case: B slices,
  one prompt each). Anything else needs an explicit ``image_index``.
* Outputs: ``mask_logits [P, C, h, w]`` with ``(h, w) = mask_size()`` (S/4 for the ViTs, S for
  medsam_lite), ``iou [P, C]``, one channel / one IoU per class.

Classes. ``num_classes = 1`` is the official binary model: one sigmoid logit channel and one IoU.
With C foreground classes PDMM's seg outputs have C channels (multi-label sigmoid, one per class)
and PRIM's IoU head yields C IoUs (output ``c`` = IoU of class ``c``'s mask), everything else is
shared: one prompt gives one mask embedding that PDMM decodes into all classes. Binary weights
and behaviour are unchanged (the IoU head keeps SAM's 4 outputs and reads the first C).

Loss this implies (for the trainer): per class ``c``, Dice + BCE between ``mask_logits[:, c]`` and
the one-hot target of class ``c`` (the official uses MONAI DiceCELoss(sigmoid=True,
squared_pred=True) on the single channel), plus L1 (official; MSE optional) between ``iou[:, c]``
and the prompt-relevance target of class ``c``: 1 when the prompt point lies on class ``c``, else 0
(the official's ``iou_label``; the mask target is always the full ground truth). At inference a
label map is ``argmax_c`` over classes whose sigmoid is >= 0.5, background elsewhere.
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from segment_anything.modeling.prompt_encoder import PromptEncoder
from segment_anything.utils.amg import build_point_grid
from torch import Tensor, nn

from .coarse_grid import coarse_to_fine_iou
from .pdmm import PDMM
from .prim import PRIM

__all__ = ["DeSAM", "GridCandidates", "GridDecodeResult", "Points", "Features", "fuse_candidates",
           "make_point_grid", "select_kept"]

Features = List[Tensor]
Points = Union[Tuple[Tensor, Tensor], Tensor]
_EMPTY_EPS = 1e-6  # probabilities are clamped to [eps, 1 - eps] before logit() for fused / empty masks


def make_point_grid(points_per_side: int, image_size: int, device: Optional[torch.device] = None) -> Tensor:
    """DeSAM's automatic-mode prompts: SAM's ``build_point_grid`` (an n x n grid of cell centres in
    [0, 1], x fastest) scaled to input pixels, coords [n*n, 2] in (x, y) order. The official uses n = 9."""
    grid = build_point_grid(points_per_side) * image_size
    return torch.as_tensor(grid, dtype=torch.float32, device=device)


class GridDecodeResult(NamedTuple):
    """Result of :meth:`DeSAM.decode_grid` for one image (C classes, k = top_k, P prompts).

    probabilities: [C, h, w] per class, the IoU-weighted mean of the sigmoid probabilities of the
        kept prompts (sum_i iou_i * sigmoid(logit_i) / sum_i iou_i); exactly the best prompt's
        sigmoid when one prompt is kept; zeros for a class where none passed.
    mask_logits: [C, h, w] the kept prompt's own logits when one prompt is kept for the class,
        otherwise logit(probabilities) (clamped to +-13.8 at eps 1e-6; empty classes -13.8).
    iou: [k, C] predicted IoU of the kept prompts, best first; 0 where ``kept`` is False.
    indices: [k, C] prompt indices of the kept prompts, best first; -1 where ``kept`` is False.
    kept: [k, C] bool.
    prompt_iou: [P, C] PRIM's predicted IoU of every prompt.
    empty: True when no prompt passed the threshold for any class.
    """

    probabilities: Tensor
    mask_logits: Tensor
    iou: Tensor
    indices: Tensor
    kept: Tensor
    prompt_iou: Tensor
    empty: bool


class GridCandidates(NamedTuple):
    """Result of :meth:`DeSAM.grid_candidates` for one image (C classes, k = top_k, P prompts).

    logits: [k, C, h, w]; ``logits[j, c]`` is class ``c``'s logits from the j-th best kept prompt for
        class ``c`` (zeros where ``kept[j, c]`` is False).
    iou: [k, C] predicted IoU of the kept prompts, best first; 0 where ``kept`` is False.
    indices: [k, C] prompt indices of the kept prompts, best first; -1 where ``kept`` is False.
    kept: [k, C] bool; per class a prefix (True rows first).
    prompt_iou: [P, C] PRIM's predicted IoU of every prompt.
    """

    logits: Tensor
    iou: Tensor
    indices: Tensor
    kept: Tensor
    prompt_iou: Tensor

    @property
    def empty(self) -> bool:
        """True when no prompt was kept for any class."""
        return not bool(self.kept.any())


def select_kept(iou: Tensor, iou_thresh: float, top_k: int) -> Tensor:
    """kept [K, ...] for a grid setting, from candidates kept unthresholded (iou [K, C] sorted best first per
    class, K >= top_k; further trailing dims, e.g. [K, T, C] for T tiles, are fine): the first ``top_k``
    rows whose IoU reaches ``iou_thresh``; the same prompts that :meth:`DeSAM.grid_candidates` keeps at
    that threshold and top-k."""
    rank = torch.arange(iou.shape[0], device=iou.device).view(-1, *[1] * (iou.ndim - 1))
    return (rank < top_k) & (iou >= iou_thresh)


def fuse_candidates(logits: Tensor, iou: Tensor, kept: Tensor) -> Tensor:
    """Kept candidates -> per-class probabilities [C, h, w].

    logits [k, C, h, w], iou and kept [k, C] as in :class:`GridCandidates`. One kept prompt: exactly its
    sigmoid; several: the mean of their sigmoids weighted by predicted IoU (clamped at 1e-6, since
    thresholds <= 0 may keep IoUs <= 0); none: zeros."""
    probabilities = torch.zeros(logits.shape[1:], dtype=logits.dtype, device=logits.device)
    for c in range(logits.shape[1]):
        n = int(kept[:, c].sum())
        if n == 1:
            probabilities[c] = torch.sigmoid(logits[0, c])
        elif n > 1:
            weights = iou[:n, c].clamp_min(1e-6).to(logits.dtype)
            probabilities[c] = (weights[:, None, None] * torch.sigmoid(logits[:n, c])).sum(0) / weights.sum()
    return probabilities


class DeSAM(nn.Module):
    """DeSAM. Build it with :func:`desam_nnu.build_desam`.

    Args:
        image_encoder: module mapping normalised images [B, 3, S, S] to the feature list
            (None for a decoder-only model fed with precomputed features).
        prompt_encoder: SAM's prompt encoder.
        prim, pdmm: the two decoder modules.
        pdmm_feature_indices: which encoder outputs feed PDMM, deepest first.
        image_size: the square input size S.
        pixel_mean, pixel_std: per-channel normalisation, in 0..255 units.
        backbone: name, for messages. config: the resolved size configuration.
        freeze_image_encoder, freeze_prompt_encoder: DeSAM trains only PRIM and PDMM.

    A frozen image encoder is a fixed feature extractor: :meth:`train` leaves it in eval mode, so
    that batch norms (TinyViT has them) neither use batch statistics nor update their running
    ones, and features are the same whether computed online or read from a cache.
    """

    mask_threshold: float = 0.0  # on logits, i.e. probability 0.5

    def __init__(
        self,
        image_encoder: Optional[nn.Module],
        prompt_encoder: PromptEncoder,
        prim: PRIM,
        pdmm: PDMM,
        *,
        pdmm_feature_indices: Sequence[int],
        image_size: int,
        pixel_mean: Sequence[float] = (123.675, 116.28, 103.53),
        pixel_std: Sequence[float] = (58.395, 57.12, 57.375),
        backbone: str = "custom",
        config: Optional[dict] = None,
        freeze_image_encoder: bool = True,
        freeze_prompt_encoder: bool = True,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.prim = prim
        self.pdmm = pdmm
        self.pdmm_feature_indices = tuple(pdmm_feature_indices)
        self.image_size = int(image_size)
        self.backbone = backbone
        self.config = dict(config or {})
        # Not persistent: neither SAM's nor the official state dict has them.
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False)
        self.set_trainable(image_encoder=not freeze_image_encoder, prompt_encoder=not freeze_prompt_encoder)

    # ------------------------------------------------------------------ bookkeeping
    @property
    def num_classes(self) -> int:
        return self.pdmm.num_classes

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def deep_supervision(self) -> bool:
        """If True, :meth:`decode` returns a list of logits, highest resolution first."""
        return self.pdmm.deep_supervision

    @deep_supervision.setter
    def deep_supervision(self, enabled: bool) -> None:
        self.pdmm.deep_supervision = bool(enabled)

    def set_trainable(self, image_encoder: bool = False, prompt_encoder: bool = False) -> None:
        """Choose what trains. PRIM and PDMM always do (except the official's unused residual
        convs, see :class:`~desam_nnu.model.pdmm.ResSEBlock`); the encoders are frozen by default."""
        if self.image_encoder is not None:
            self.image_encoder.requires_grad_(image_encoder)
        self.prompt_encoder.requires_grad_(prompt_encoder)
        self.prim.requires_grad_(True)
        self.pdmm.requires_grad_(True)
        for m in self.pdmm.modules():
            if getattr(m, "project_residual", True) is False:
                m.conv3.conv.weight.requires_grad_(False)

    def train(self, mode: bool = True) -> "DeSAM":
        """nn.Module.train, except that a frozen image encoder (no parameter requiring grad) stays
        in eval mode."""
        super().train(mode)
        if mode and self.image_encoder is not None and not any(p.requires_grad for p in self.image_encoder.parameters()):
            self.image_encoder.eval()
        return self

    def trainable_parameter_count(self) -> int:
        """Number of parameter elements with requires_grad (what an optimiser would update)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def extra_repr(self) -> str:
        return f"backbone={self.backbone!r}, image_size={self.image_size}, num_classes={self.num_classes}"

    @staticmethod
    def _grad_enabled_for(module: nn.Module) -> bool:
        # Frozen parts run without autograd: no activations kept for a backward that never comes.
        return torch.is_grad_enabled() and any(p.requires_grad for p in module.parameters())

    # ------------------------------------------------------------------ encoder
    def preprocess(self, images: Tensor) -> Tensor:
        """images: [B, 3, H, W] RGB in 0..255 with H, W <= image_size -> normalised and zero-padded
        at the bottom/right (as SAM) to [B, 3, image_size, image_size]."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W], got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        if h > self.image_size or w > self.image_size:
            raise ValueError(f"images are {h}x{w}, larger than the model's image_size {self.image_size}; resize first")
        x = (images.to(self.pixel_mean.dtype) - self.pixel_mean) / self.pixel_std
        return F.pad(x, (0, self.image_size - w, 0, self.image_size - h))

    def encode(self, images: Tensor) -> Features:
        """images: [B, 3, H, W] RGB in 0..255, resized to image_size (smaller is zero-padded).

        Returns the encoder feature list. For the SAM ViTs: the outputs of every global-attention
        block but the last, [B, encoder_embed_dim, S/16, S/16] each (3 of them), then the neck
        [B, prompt_embed_dim, S/16, S/16]. For medsam_lite: TinyViT's stage 0 [B, 128, S/2, S/2],
        stage 3 [B, 320, S/4, S/4], then the neck [B, 256, S/4, S/4]. Runs without autograd while
        the encoder is frozen.
        """
        if self.image_encoder is None:
            raise RuntimeError("this DeSAM was built without an image encoder; pass precomputed features to decode()")
        x = self.preprocess(images)
        with torch.set_grad_enabled(self._grad_enabled_for(self.image_encoder)):
            return list(self.image_encoder(x))

    # ------------------------------------------------------------------ prompts
    def _as_points(self, points: Points) -> Tuple[Tensor, Tensor]:
        if isinstance(points, (tuple, list)):
            coords, labels = points
        else:
            coords, labels = points, None
        coords = torch.as_tensor(coords, dtype=torch.float32, device=self.device)
        if coords.ndim == 2:
            coords = coords[:, None, :]
        if coords.ndim != 3 or coords.shape[-1] != 2:
            raise ValueError(f"point coords must be [P, N, 2] or [P, 2], got {tuple(coords.shape)}")
        if labels is None:
            labels = torch.ones(coords.shape[:2], dtype=torch.int64, device=self.device)
        else:
            labels = torch.as_tensor(labels, device=self.device)
            if labels.ndim == 1:
                labels = labels[:, None]
            if labels.shape != coords.shape[:2]:
                raise ValueError(f"point labels {tuple(labels.shape)} do not match coords {tuple(coords.shape)}")
        return coords, labels

    def embed_prompts(self, points: Optional[Points] = None, boxes: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """Prompt encoder: returns sparse [P, N_tokens, D] and dense [1, D, h, w] embeddings.

        DeSAM takes no mask prompts, so dense is SAM's no-mask embedding, the same for every
        prompt: it is returned with batch 1 and broadcast. See the module docstring for formats."""
        if points is None and boxes is None:
            raise ValueError("DeSAM needs a prompt: points and/or boxes")
        pts = self._as_points(points) if points is not None else None
        if boxes is not None:
            boxes = torch.as_tensor(boxes, dtype=torch.float32, device=self.device).reshape(-1, 4)
            if pts is not None and boxes.shape[0] != pts[0].shape[0]:
                raise ValueError(f"{pts[0].shape[0]} point prompts but {boxes.shape[0]} boxes")
        with torch.set_grad_enabled(self._grad_enabled_for(self.prompt_encoder)):
            sparse, dense = self.prompt_encoder(points=pts, boxes=boxes, masks=None)
        return sparse, dense[:1]

    @staticmethod
    def _resolve_image_index(num_images: int, num_prompts: int, image_index: Optional[Tensor]) -> Optional[Tensor]:
        """None when prompts broadcast (B == 1) or pair (B == P); else a checked LongTensor [P]."""
        if image_index is None:
            if num_images in (1, num_prompts):
                return None
            raise ValueError(
                f"features hold {num_images} images and there are {num_prompts} prompts: pass image_index [P]"
            )
        image_index = torch.as_tensor(image_index, dtype=torch.long).reshape(-1)
        if image_index.numel() != num_prompts:
            raise ValueError(f"image_index has {image_index.numel()} entries for {num_prompts} prompts")
        if num_prompts and (int(image_index.min()) < 0 or int(image_index.max()) >= num_images):
            raise ValueError(f"image_index values must lie in [0, {num_images}), got {image_index.tolist()}")
        if num_images == 1:
            return None
        return image_index

    def _pdmm_features(self, features: Sequence[Tensor]) -> List[Tensor]:
        return [features[i] for i in self.pdmm_feature_indices]

    def mask_size(self, features: Optional[Sequence[Tensor]] = None) -> Tuple[int, int]:
        """(H, W) of the mask logits: the neck size x 2**(PDMM levels - 1), the neck size taken from
        ``features`` or, without them, from the model's image_size. S/4 x S/4 for SAM's ViTs
        (1024 -> 256), S x S for medsam_lite (256 -> 256)."""
        if features is not None:
            h, w = (int(n) for n in features[-1].shape[-2:])
        else:
            h, w = (int(n) for n in self.prompt_encoder.image_embedding_size)
        scale = 2 ** (len(self.pdmm_feature_indices) - 1)
        return h * scale, w * scale

    # ------------------------------------------------------------------ decoder
    def decode(
        self,
        features: Sequence[Tensor],
        points: Optional[Points] = None,
        boxes: Optional[Tensor] = None,
        image_index: Optional[Tensor] = None,
    ) -> Tuple[Union[Tensor, List[Tensor]], Tensor]:
        """Decode P prompts in one batched call.

        features: the list from :meth:`encode` (batch B). points / boxes / image_index: see the
        module docstring. PDMM's image-only context branches run once per image and are shared
        by all prompts of that image.
        Returns mask_logits [P, C, *mask_size()] (a list, highest resolution first, when
        deep_supervision is on) and iou [P, C].
        """
        sparse, dense = self.embed_prompts(points, boxes)
        neck = features[-1]
        index = self._resolve_image_index(neck.shape[0], sparse.shape[0], image_index)
        if index is not None:
            index = index.to(neck.device)
        mask_embedding, iou = self.prim(neck, self.prompt_encoder.get_dense_pe(), sparse, dense, index)
        context = self.pdmm.encode_context(self._pdmm_features(features))
        mask_logits = self.pdmm.decode(mask_embedding, context, index)
        return mask_logits, iou

    def grid_candidates(
        self,
        features: Sequence[Tensor],
        points: Points,
        top_k: int = 1,
        iou_thresh: float = float("-inf"),
        prompts_per_batch: Optional[int] = 128,
        coarse: bool = False,
    ) -> GridCandidates:
        """The ``top_k`` best prompts per class for ONE image, with their masks: what every grid setting
        at most ``top_k`` chooses from.

        1. PRIM on all P prompts, batched; 2. per class, the prompts with predicted IoU >= iou_thresh,
        sorted by IoU (stable: ties keep prompt order), the first ``top_k`` kept; 3. PDMM's per-prompt
        path only for the union of kept prompts (context branches once). With the default
        ``iou_thresh = -inf`` the ``top_k`` best are kept whatever their IoU, so any threshold and any
        top-k' <= top_k is a selection over the result (:func:`select_kept`), not a new network run.
        prompts_per_batch: PRIM runs over at most this many prompts at a time, to bound memory for
            large grids (None: all at once). When P exceeds it, the kept prompts' mask embeddings
            are recomputed (one extra PRIM run) instead of storing all P of them.
        coarse: score a square grid coarse to fine (:mod:`.coarse_grid`: about half of PRIM's work, not exact);
            the prompts it does not score get IoU -inf in ``prompt_iou``.
        """
        if features[-1].shape[0] != 1:
            raise ValueError(f"grid decoding takes one image, got a batch of {features[-1].shape[0]}")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        sparse, dense = self.embed_prompts(points, None)
        neck, image_pe = features[-1], self.prompt_encoder.get_dense_pe()
        num_prompts = sparse.shape[0]
        chunk = num_prompts if not prompts_per_batch else max(1, int(prompts_per_batch))
        mask_embedding: Optional[Tensor] = None
        if coarse:
            def score(idx: Tensor) -> Tensor:  # PRIM's IoU [m, C] for the prompts idx [m], chunk at a time
                return torch.cat([self.prim(neck, image_pe, sparse[idx[s : s + chunk]], dense)[1]
                                  for s in range(0, len(idx), chunk)])
            prompt_iou = coarse_to_fine_iou(score, num_prompts, top_k, neck.device)
        elif chunk >= num_prompts:
            mask_embedding, prompt_iou = self.prim(neck, image_pe, sparse, dense)
        else:
            prompt_iou = torch.cat([self.prim(neck, image_pe, sparse[s : s + chunk], dense)[1] for s in range(0, num_prompts, chunk)])
        num_classes = prompt_iou.shape[1]
        k = min(top_k, num_prompts)
        scores = prompt_iou.masked_fill(prompt_iou < iou_thresh, float("-inf"))
        top_scores, top_idx = torch.sort(scores, dim=0, descending=True, stable=True)
        top_scores, top_idx = top_scores[:k], top_idx[:k]  # [k, C], best first
        kept = torch.isfinite(top_scores)
        iou = torch.where(kept, top_scores, torch.zeros_like(top_scores))
        indices = torch.where(kept, top_idx, torch.full_like(top_idx, -1))
        h, w = self.mask_size(features)
        logits = torch.zeros(k, num_classes, h, w, dtype=neck.dtype, device=neck.device)
        if bool(kept.any()):
            selected = torch.unique(top_idx[kept])  # sorted prompt indices that need a mask
            context = self.pdmm.encode_context(self._pdmm_features(features))
            if mask_embedding is not None:
                kept_embedding = mask_embedding.index_select(0, selected)
            else:
                kept_embedding = self.prim(neck, image_pe, sparse.index_select(0, selected), dense)[0]
            decoded = self.pdmm.decode(kept_embedding, context)
            if isinstance(decoded, list):
                decoded = decoded[0]
            row_of = torch.full((num_prompts,), -1, dtype=torch.long, device=selected.device)
            row_of[selected] = torch.arange(selected.numel(), device=selected.device)
            for c in range(num_classes):
                n = int(kept[:, c].sum())  # kept rows are a prefix: scores are sorted, -inf last
                if n:
                    logits[:n, c] = decoded[row_of[top_idx[:n, c]], c].to(logits.dtype)
        return GridCandidates(logits, iou, indices, kept, prompt_iou)

    def decode_grid(
        self,
        features: Sequence[Tensor],
        points: Points,
        iou_thresh: float = 0.5,
        top_k: int = 1,
        prompts_per_batch: Optional[int] = 128,
    ) -> GridDecodeResult:
        """DeSAM's automatic (grid) mode for ONE image (features with batch 1).

        :meth:`grid_candidates` (PRIM on all prompts, keep those with predicted IoU >= iou_thresh
        per class, PDMM for the top_k best kept), then their sigmoid probabilities fused, weighted by
        the predicted IoU (:func:`fuse_candidates`, see :class:`GridDecodeResult`). top_k=1
        reproduces the official automatic mode, which ends up keeping the single highest-IoU mask.
        (The official filters with ``iou > thresh``; here a prompt exactly at the threshold is kept.)
        points: e.g. a 9x9 grid, coords [81, 2] or (coords [P, N, 2], labels [P, N]).
        """
        cand = self.grid_candidates(features, points, top_k=top_k, iou_thresh=iou_thresh,
                                    prompts_per_batch=prompts_per_batch)
        probabilities = fuse_candidates(cand.logits, cand.iou, cand.kept)
        mask_logits = torch.logit(probabilities.clamp(_EMPTY_EPS, 1 - _EMPTY_EPS))
        single = cand.kept.sum(0) == 1
        mask_logits[single] = cand.logits[0][single]  # one kept prompt: its own logits, unclamped
        return GridDecodeResult(probabilities, mask_logits, cand.iou, cand.indices, cand.kept, cand.prompt_iou,
                                cand.empty)

    def forward(
        self,
        images: Tensor,
        points: Optional[Points] = None,
        boxes: Optional[Tensor] = None,
        image_index: Optional[Tensor] = None,
    ) -> Tuple[Union[Tensor, List[Tensor]], Tensor]:
        """encode + decode. images: [B, 3, S, S] in 0..255; prompts as in :meth:`decode`.
        Returns mask_logits [P, C, *mask_size()] (S/4 for the ViTs, S for medsam_lite) and iou [P, C]."""
        return self.decode(self.encode(images), points=points, boxes=boxes, image_index=image_index)
