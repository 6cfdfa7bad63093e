"""DeSAM with its prompts built in: the network nnU-Net's sliding window calls at predict time.

nnU-Net's predictor calls ``network(tile)`` on one tile at a time (mirrored copies included),
averages the outputs with Gaussian weights over tiles, mirrors and folds, and takes the argmax.
:class:`PromptedDeSAM` makes DeSAM fit that call: it maps the tile's channels to SAM's RGB input,
encodes it once, prompts it (DeSAM's automatic ``grid`` mode through ``grid_candidates``: PRIM batched
over every grid point, PDMM only for the kept prompts, fused at the patch; or one whole-tile ``box``) and returns
``[0.5, p_1, ..., p_C]`` at the tile's resolution (see ``desam_nnu.planners.plans.desam_probabilities``).
Averaging probabilities, not logits, is what DeSAM's IoU-weighted fusion does too.
"""
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from desam_nnu.config import DeSAMConfig
from desam_nnu.inference.tiles import grid_prompts_per_call
from desam_nnu.model import DeSAM, fuse_candidates, make_point_grid, select_kept
from desam_nnu.prompts import whole_boxes
from desam_nnu.rgb import to_network_input

PROMPT_MODES = ("grid", "box")


@dataclass(frozen=True)
class PromptSettings:
    """How tiles are prompted at predict time; the plans' defaults unless the user overrides them."""

    mode: str = "grid"
    grid_points_per_side: int = 9
    iou_threshold: float = 0.5
    top_k: int = 1
    coarse_grid: bool = False  # PRIM coarse to fine over the grid (model/coarse_grid.py): faster, not exact

    def __post_init__(self) -> None:
        if self.mode not in PROMPT_MODES:
            raise ValueError(f"prompt mode {self.mode!r}: use one of {', '.join(PROMPT_MODES)}")
        if self.grid_points_per_side < 1 or self.top_k < 1:
            raise ValueError("grid points per side and top-k must be at least 1")

    @classmethod
    def from_plans(cls, cfg: DeSAMConfig, **overrides) -> "PromptSettings":
        """The plans' prompt defaults, with every override that is not None applied."""
        settings = dict(mode=cfg.prompts.predict_mode, grid_points_per_side=cfg.prompts.grid_points_per_side,
                        iou_threshold=cfg.prompts.iou_threshold, top_k=cfg.prompts.top_k)
        settings.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**settings)


@dataclass
class GridStats:
    """What grid mode did over one case: tiles it decoded and, of those, tiles where no prompt reached the
    IoU threshold (their output is background)."""

    tiles: int = 0
    empty: int = 0

    @property
    def kept_no_prompt(self) -> bool:
        """Grid mode decoded tiles and kept no prompt on any: the whole case came out background."""
        return self.tiles > 0 and self.empty == self.tiles


class TileNetwork(nn.Module):
    """``forward(tiles [B, C_in, p, p], 0..255) -> [B, 1 + C, p, p]``: 0.5, then class probabilities.

    What every tile network of the predictor shares: tiles without contrast (one value throughout: a
    blank slice, padding, the zeroed outside of a skull-stripped head) hold nothing to segment and are
    background without a call to :meth:`_probabilities`; the others get theirs from it.
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self._stats: Optional[GridStats] = None
        self._informative: Optional[Tensor] = None  # which tiles of the current call reached _probabilities

    @contextmanager
    def collecting(self) -> Iterator["GridStats"]:
        """``with net.collecting() as stats:`` the grid statistics of the calls inside (one case), returned
        to the caller as an object instead of counters kept on the module."""
        stats, previous = GridStats(), self._stats
        self._stats = stats
        try:
            yield stats
        finally:
            self._stats = previous

    @torch.no_grad()
    def forward(self, tiles: Tensor) -> Tensor:
        flat = tiles.flatten(1)
        informative = self._informative = flat.amax(1) > flat.amin(1)
        probabilities = torch.zeros((tiles.shape[0], self.num_classes, *tiles.shape[-2:]), device=tiles.device)
        if informative.any():
            probabilities[informative] = self._probabilities(tiles[informative])
        background = torch.full_like(probabilities[:, :1], 0.5)
        return torch.cat([background, probabilities], dim=1)

    def _probabilities(self, tiles: Tensor) -> Tensor:
        """Informative tiles [B, C_in, p, p] -> per-class probabilities [B, C, p, p]."""
        raise NotImplementedError

    def _count_grid(self, kept: Tensor) -> None:
        """Count one grid-decoded tile (kept [k, C] says which prompts it kept) into the statistics being
        collected, if any."""
        if self._stats is not None:
            self._stats.tiles += 1
            self._stats.empty += int(not bool(kept.any()))


def grid_probabilities(logits: Tensor, iou: Tensor, iou_threshold: float, top_k: int) -> Tuple[Tensor, Tensor]:
    """One tile's grid-mode output from candidates kept unthresholded (logits [K, C, p, p] at the patch,
    iou [K, C] sorted best first): probabilities [C, p, p] and kept [K, C] for that threshold and top-k.
    The same function serves prediction and the replay of stored candidates, so both give equal outputs."""
    kept = select_kept(iou, iou_threshold, top_k)
    return fuse_candidates(logits, iou, kept), kept


class DeSAMTiles(TileNetwork):
    """A tile network around one DeSAM and its fold ensemble (every fold's DeSAM, all holding ``desam``'s image
    encoder). The state dict is the wrapped DeSAM's own (no prefix), so nnU-Net's per-fold
    ``network.load_state_dict(checkpoint['network_weights'])`` loads trainer checkpoints as they are."""

    def __init__(self, desam: DeSAM, cfg: DeSAMConfig, ensemble: Sequence[DeSAM] = (),
                 encoder_dtype: Optional[torch.dtype] = None) -> None:
        super().__init__(desam.num_classes)
        if any(net.image_encoder is not desam.image_encoder for net in ensemble):
            raise ValueError("an ensemble's folds must share the wrapped DeSAM's image encoder")
        self.desam, self.cfg, self.ensemble = desam, cfg, nn.ModuleList(ensemble)
        self.encoder_dtype = encoder_dtype  # None: float32; torch.bfloat16: desam_predict --bf16 (not exact)
        # what encodes instead of desam.encode, the same arithmetic (the predictor's ONNX Runtime encoder on a CPU)
        self.fast_encoder: Optional[Callable[[Tensor], List[Tensor]]] = None
        self.tile_calls = 0  # tiles encoded, for benchmarks and tests

    def encode(self, tiles: Tensor) -> List[Tensor]:
        """Tiles [B, C_in, p, p] (0..255) -> DeSAM's features (float32): by ``fast_encoder`` when one is set, else
        by the encoder, under autocast to ``encoder_dtype`` when one is set (the decoders stay float32)."""
        x = to_network_input(tiles.float(), self.cfg.channel_to_rgb, self.cfg.image_size)
        if self.fast_encoder is not None:
            return self.fast_encoder(x)
        if self.encoder_dtype is None:
            return self.desam.encode(x)
        with torch.autocast(x.device.type, dtype=self.encoder_dtype):
            features = self.desam.encode(x)
        return [f.float() for f in features]

    def state_dict(self, *args, **kwargs):
        return self.desam.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.desam.load_state_dict(state_dict, strict=strict, assign=assign)


class PromptedDeSAM(DeSAMTiles):
    """DeSAM as the tile network, prompted with :class:`PromptSettings`.

    Grid mode: :meth:`DeSAM.grid_candidates` keeps the ``top_k`` best prompts at the threshold; their
    logits are resized to the patch and fused there (:func:`fuse_candidates`). With ``record`` set
    (the final validation does), every tile also keeps what any other setting would need (the
    ``record.top_k`` best grid prompts whatever their IoU, and the whole-box output) in ``record``,
    and the output is composed from that record, exactly as a replay composes it.

    With ``ensemble`` (folds that froze the same encoder), each tile is encoded once and decoded by every
    fold, and the folds' probabilities are averaged here instead of over nnU-Net's one sliding window per
    fold (the same mean: the sliding window's weighting is linear).
    """

    def __init__(self, desam: DeSAM, cfg: DeSAMConfig, prompts: PromptSettings,
                 record: Optional["CandidateRecord"] = None, ensemble: Sequence[DeSAM] = (),
                 encoder_dtype: Optional[torch.dtype] = None) -> None:
        super().__init__(desam, cfg, ensemble, encoder_dtype)
        self.prompts, self.record = prompts, record
        self.register_buffer("grid", make_point_grid(prompts.grid_points_per_side, cfg.image_size), persistent=False)

    def _to_patch(self, logits: Tensor, size) -> Tensor:
        """Mask logits [N, C, h, w] -> [N, C, p, p] at the patch (bilinear, as the plans say)."""
        return F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)

    def _probabilities(self, tiles: Tensor) -> Tensor:
        self.tile_calls += tiles.shape[0]
        size = tiles.shape[-2:]
        features = self.encode(tiles)
        if self.record is not None:
            return self._recorded(tiles, features)
        if not len(self.ensemble):
            return self._decoded(self.desam, features, size)
        return torch.stack([self._decoded(net, features, size) for net in self.ensemble]).mean(0)

    def _decoded(self, desam: DeSAM, features, size) -> Tensor:
        """One network's probabilities [B, C, p, p] for the encoded tiles, prompted as ``prompts`` say."""
        if self.prompts.mode == "box":
            return torch.sigmoid(self._to_patch(self._box_logits(features, desam), size))
        out = torch.zeros((len(features[-1]), self.num_classes, *size), device=features[-1].device)
        for i in range(len(out)):
            cand = desam.grid_candidates([f[i:i + 1] for f in features], self.grid, top_k=self.prompts.top_k,
                                         iou_thresh=self.prompts.iou_threshold,
                                         prompts_per_batch=grid_prompts_per_call(features[-1].device),
                                         coarse=self.prompts.coarse_grid)
            self._count_grid(cand.kept)
            if not cand.empty:
                out[i] = fuse_candidates(self._to_patch(cand.logits, size), cand.iou, cand.kept)
        return out

    def _box_logits(self, features, desam: Optional[DeSAM] = None) -> Tensor:
        n = features[-1].shape[0]
        boxes = whole_boxes(n, self.cfg.image_size).to(features[-1].device)
        return (desam or self.desam).decode(features, boxes=boxes, image_index=torch.arange(n))[0]

    def _recorded(self, tiles: Tensor, features) -> Tensor:
        """Record every tile's candidates, then compose this setting's output from the record."""
        size, record = tiles.shape[-2:], self.record
        box = torch.sigmoid(self._to_patch(self._box_logits(features), size)) if "box" in record.modes else None
        out = torch.zeros((len(tiles), self.num_classes, *size), device=tiles.device)
        for i in range(len(tiles)):
            tile = TileCandidates(fingerprint=tile_fingerprint(tiles[i]), box=None if box is None else box[i])
            if "grid" in record.modes:
                cand = self.desam.grid_candidates([f[i:i + 1] for f in features], self.grid, top_k=record.top_k,
                                                  prompts_per_batch=grid_prompts_per_call(features[-1].device))
                tile.grid_logits, tile.grid_iou = self._to_patch(cand.logits, size), cand.iou
            record.tiles.append(tile)
            out[i] = record.compose(tile, self.prompts, self)
        return out


def tile_fingerprint(tile: Tensor) -> Tuple[float, float]:
    """Two sums that tell tiles apart (a mirrored copy included): checked when stored candidates are
    replayed, so that a replay never composes one tile's output from another tile's record."""
    t = tile.double().flatten()
    ramp = torch.linspace(0.0, 1.0, t.numel(), dtype=torch.float64, device=t.device)
    return float(t.sum()), float((t * ramp).sum())


@dataclass
class TileCandidates:
    """What one informative tile gives under every setting: the K best grid prompts per class whatever
    their IoU (grid_logits [K, C, p, p] at the patch, grid_iou [K, C] sorted) and the whole-box
    probabilities [C, p, p]; either is None when that mode is not recorded."""

    fingerprint: Tuple[float, float]
    box: Optional[Tensor] = None
    grid_logits: Optional[Tensor] = None
    grid_iou: Optional[Tensor] = None


@dataclass
class CandidateRecord:
    """The tiles of the case being predicted, in the order nnU-Net's sliding window called them."""

    modes: Tuple[str, ...]
    top_k: int
    tiles: List[TileCandidates] = field(default_factory=list)

    def compose(self, tile: TileCandidates, prompts: PromptSettings, counter: TileNetwork) -> Tensor:
        """One tile's probabilities [C, p, p] under ``prompts``, from its record."""
        if prompts.mode == "box":
            if tile.box is None:
                raise ValueError("box mode was not recorded")
            return tile.box
        if tile.grid_logits is None:
            raise ValueError("grid mode was not recorded")
        if prompts.top_k > self.top_k:
            raise ValueError(f"top-k {prompts.top_k}: only the {self.top_k} best prompts were recorded")
        probabilities, kept = grid_probabilities(tile.grid_logits, tile.grid_iou, prompts.iou_threshold,
                                                 prompts.top_k)
        counter._count_grid(kept)
        return probabilities


def all_background_warning(cases: List[str], iou_threshold: float) -> str:
    """The one-line warning for cases where grid mode kept no prompt on any tile (an all-background output).

    Why it matters: PRIM's IoU head calibrates slowly (L1 towards 0/1 prompt-relevance targets), so a
    briefly trained model can have good masks yet no prompt above the threshold anywhere."""
    shown = ", ".join(cases[:5]) + (f" and {len(cases) - 5} more" if len(cases) > 5 else "")
    return (f"warning: grid mode kept no prompt on any slice of {len(cases)} case(s) ({shown}): no predicted IoU "
            f"reached {iou_threshold:g}, so they are all background. A briefly trained IoU head does this; "
            f"desam_find_best_configuration chooses the threshold from the validation cases, and "
            f"--prompt-mode box (for box-trained models) or a lower --iou-thresh decodes them anyway.")
