"""DeSAM with its prompts built in: the network nnU-Net's sliding window calls at predict time.

nnU-Net's predictor calls ``network(tile)`` on one tile at a time (mirrored copies included),
averages the outputs with Gaussian weights over tiles, mirrors and folds, and takes the argmax.
:class:`PromptedDeSAM` makes DeSAM fit that call: it maps the tile's channels to SAM's RGB input,
encodes it once, prompts it (DeSAM's automatic ``grid`` mode through ``decode_grid``: PRIM batched
over every grid point, PDMM only for the kept prompts; or one whole-tile ``box``) and returns
``[0.5, p_1, ..., p_C]`` at the tile's resolution (see ``desam_nnu.planners.plans.desam_probabilities``).
Averaging probabilities, not logits, is what DeSAM's IoU-weighted fusion does too.
"""
from dataclasses import dataclass
from typing import List

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from desam_nnu.config import DeSAMConfig
from desam_nnu.model import DeSAM, make_point_grid
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


class PromptedDeSAM(nn.Module):
    """``forward(tiles [B, C_in, p, p], 0..255) -> [B, 1 + C, p, p]``: 0.5, then class probabilities.

    The state dict is the wrapped DeSAM's own (no prefix), so nnU-Net's per-fold
    ``network.load_state_dict(checkpoint['network_weights'])`` loads trainer checkpoints as they are.
    """

    def __init__(self, desam: DeSAM, cfg: DeSAMConfig, prompts: PromptSettings) -> None:
        super().__init__()
        self.desam, self.cfg, self.prompts = desam, cfg, prompts
        self.register_buffer("grid", make_point_grid(prompts.grid_points_per_side, cfg.image_size), persistent=False)
        self.tile_calls = 0  # tiles encoded, for benchmarks and tests
        self.grid_tiles = 0  # tiles decoded in grid mode ...
        self.grid_tiles_empty = 0  # ... and of those, tiles where no prompt reached the IoU threshold

    def grid_counts(self) -> tuple:
        """(grid tiles decoded, of those kept no prompt) so far; pass it to :meth:`kept_no_prompt_since`."""
        return self.grid_tiles, self.grid_tiles_empty

    def kept_no_prompt_since(self, counts: tuple) -> bool:
        """True when grid mode decoded tiles since ``counts`` and kept no prompt on any of them."""
        tiles, empty = self.grid_tiles - counts[0], self.grid_tiles_empty - counts[1]
        return tiles > 0 and empty == tiles

    def state_dict(self, *args, **kwargs):
        return self.desam.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.desam.load_state_dict(state_dict, strict=strict, assign=assign)

    @torch.no_grad()
    def forward(self, tiles: Tensor) -> Tensor:
        """Tiles without contrast (one value throughout: a blank slice, padding, the zeroed outside of a
        skull-stripped head) hold nothing to segment: they are background without running the network."""
        flat = tiles.flatten(1)
        informative = flat.amax(1) > flat.amin(1)
        probabilities = torch.zeros((tiles.shape[0], self.desam.num_classes, *tiles.shape[-2:]), device=tiles.device)
        if informative.any():
            probabilities[informative] = self._probabilities(tiles[informative])
        background = torch.full_like(probabilities[:, :1], 0.5)
        return torch.cat([background, probabilities], dim=1)

    def _probabilities(self, tiles: Tensor) -> Tensor:
        """Tiles [B, C_in, p, p] -> per-class sigmoid probabilities [B, C, p, p]."""
        self.tile_calls += tiles.shape[0]
        features = self.desam.encode(to_network_input(tiles.float(), self.cfg.channel_to_rgb, self.cfg.image_size))
        if self.prompts.mode == "box":
            logits, _ = self.desam.decode(features, boxes=whole_boxes(len(tiles), self.cfg.image_size).to(tiles.device),
                                          image_index=torch.arange(len(tiles)))
        else:
            results = [self.desam.decode_grid([f[i:i + 1] for f in features], self.grid,
                                              iou_thresh=self.prompts.iou_threshold, top_k=self.prompts.top_k)
                       for i in range(len(tiles))]
            self.grid_tiles += len(results)
            self.grid_tiles_empty += sum(bool(r.empty) for r in results)
            logits = torch.stack([r.mask_logits for r in results])
        logits = F.interpolate(logits.float(), size=tiles.shape[-2:], mode="bilinear", align_corners=False)
        return torch.sigmoid(logits)


def all_background_warning(cases: List[str], iou_threshold: float) -> str:
    """The one-line warning for cases where grid mode kept no prompt on any tile (an all-background output).

    Why it matters: PRIM's IoU head calibrates slowly (L1 towards 0/1 prompt-relevance targets), so a
    briefly trained model can have good masks yet no prompt above the threshold anywhere."""
    shown = ", ".join(cases[:5]) + (f" and {len(cases) - 5} more" if len(cases) > 5 else "")
    return (f"warning: grid mode kept no prompt on any slice of {len(cases)} case(s) ({shown}): no predicted IoU "
            f"reached {iou_threshold:g}, so they are all background. A briefly trained IoU head does this; "
            f"--prompt-mode box, or a lower --iou-thresh, decodes them anyway.")
