"""The tile networks of the prompt-free families: every class from the image alone.

nnU-Net's sliding window calls ``network(tile)``. For a 2D family (DAPSAM) :class:`PromptFreeTiles` maps the tile
to the family's input as the plans say (channels to RGB, resize to ``image_size``, the family's normalisation),
runs the network once and returns ``[0.5, p_1, ..., p_C]`` at the tile's resolution, as
:class:`~.prompted.PromptedDeSAM` does. For a family over 3D patches (MaskSAM) :class:`MixtureTiles` returns its
semantic mixture over a whole 3D tile.
"""
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from desam_nnu.config import DeSAMConfig
from desam_nnu.inference.prompted import TileNetwork
from desam_nnu.rgb import network_input


def family_logits(network: nn.Module, patches: Tensor, cfg: DeSAMConfig) -> Tensor:
    """Patches [B, C_in, p, p] (0..255) -> the network's mask logits [B, C, p, p] at the patch: its
    low-resolution logits (the decoder's, [B, C, S/4, S/4]) resized bilinearly, as the plans say. The one
    forward that training and prediction share."""
    x = network_input(patches, cfg.channel_to_rgb, cfg.image_size, cfg.input_normalisation)
    logits = network(x, low_res=True)
    return F.interpolate(logits.float(), size=patches.shape[-2:], mode="bilinear", align_corners=False)


class PromptFreeTiles(TileNetwork):
    """``forward(tiles [B, C_in, p, p]) -> [B, 1 + C, p, p]`` for a network without prompts.

    The state dict is the wrapped network's own, so nnU-Net's per-fold ``load_state_dict`` loads
    trainer checkpoints unchanged. ``prompts`` is None and ``ensemble`` empty: the predictor asks both."""

    def __init__(self, network: nn.Module, cfg: DeSAMConfig) -> None:
        super().__init__(cfg.num_classes)
        self.network, self.cfg = network, cfg
        self.prompts = None
        self.ensemble = nn.ModuleList()

    def state_dict(self, *args, **kwargs):
        return self.network.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.network.load_state_dict(state_dict, strict=strict, assign=assign)

    def _probabilities(self, tiles: Tensor) -> Tensor:
        return torch.sigmoid(family_logits(self.network, tiles.float(), self.cfg))


def volume_input(patches: Tensor) -> Tensor:
    """3D patches [B, C_in, T, p, p] (0..255, the plans' mapping) -> MaskSAM's stem input at 0..1 (plans'
    ``input_normalisation`` "unit_range"; the learned stem maps the channels to SAM's three itself)."""
    return patches.float() / 255


class MixtureTiles(PromptFreeTiles):
    """``forward(tiles [B, C_in, T, p, p]) -> [B, 1 + C, T, p, p]``: MaskSAM's semantic mixture (background first;
    ``planners.plans.mixture_probabilities`` makes it probabilities). A tile without contrast is background
    (1, 0, ..., 0) without a call, as in :class:`~.prompted.TileNetwork`."""

    @torch.no_grad()
    def forward(self, tiles: Tensor) -> Tensor:
        flat = tiles.flatten(1)
        informative = self._informative = flat.amax(1) > flat.amin(1)
        out = torch.zeros((tiles.shape[0], self.num_classes + 1, *tiles.shape[2:]), device=tiles.device)
        out[:, 0] = 1
        if informative.any():
            out[informative] = self.network(volume_input(tiles[informative])).float()
        return out
