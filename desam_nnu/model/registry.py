"""The network families: one entry per SAM adaptation, and the two calls that serve them all.

A family provides (and adding one touches only its own folder plus one line in ``NETWORKS``):

* ``build(backbone, image_size, num_classes, checkpoint=None, pretrained=None, **size_overrides)``:
  the network, strict about its checkpoints;
* ``load_official(source, net)``: a state dict in the layout of the family's official repository,
  strictly (no key may be missing, left over or mis-shaped);
* ``network_class``, by which :func:`load_official` recognises a built network;
* ``backbones`` it runs on and its ``native_image_size`` (None: the backbone's own).

Training and prediction both build through :func:`build_network`, from the plans' ``architecture``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

from torch import Tensor, nn

from .backbones import BACKBONES, build_desam
from .checkpoints import load_official_desam
from .dapsam import DAPSAM, NATIVE_IMAGE_SIZE as DAPSAM_IMAGE_SIZE, build_dapsam, load_official_dapsam
from .dapsam.build import VIT_BACKBONES as DAPSAM_BACKBONES
from .desam import DeSAM

StateDictSource = Union[str, os.PathLike, Mapping[str, Tensor]]


@dataclass(frozen=True)
class NetworkFamily:
    name: str
    build: Callable[..., nn.Module]
    load_official: Callable[[StateDictSource, nn.Module], nn.Module]
    network_class: type
    backbones: Tuple[str, ...]
    native_image_size: Optional[int] = None
    official_repository: str = ""


NETWORKS: Dict[str, NetworkFamily] = {
    "desam": NetworkFamily("desam", build_desam, load_official_desam, DeSAM, tuple(BACKBONES),
                           official_repository="yifangao112/DeSAM"),
    "dapsam": NetworkFamily("dapsam", build_dapsam, load_official_dapsam, DAPSAM, DAPSAM_BACKBONES,
                            native_image_size=DAPSAM_IMAGE_SIZE, official_repository="wkklavis/DAPSAM"),
}


def network_family(name: str) -> NetworkFamily:
    if name not in NETWORKS:
        raise ValueError(f"unknown network family {name!r}; choose one of {sorted(NETWORKS)}")
    return NETWORKS[name]


def build_network(family: str, backbone: str, image_size: Optional[int] = None, num_classes: int = 1,
                  pretrained: Optional[bool] = None, checkpoint: Optional[StateDictSource] = None,
                  **size_overrides: Any) -> nn.Module:
    """The network of ``family`` on ``backbone``; the same call for every family (see the module doc).
    pretrained None: the backbone's packaged weights when it has some and no checkpoint is given."""
    spec = network_family(family)
    if backbone not in spec.backbones:
        raise ValueError(f"{family} runs on {list(spec.backbones)}, not {backbone!r}")
    return spec.build(backbone, image_size, num_classes, checkpoint, pretrained=pretrained, **size_overrides)


def family_of(net: nn.Module) -> NetworkFamily:
    """The family whose network ``net`` is."""
    for spec in NETWORKS.values():
        if isinstance(net, spec.network_class):
            return spec
    raise TypeError(f"{type(net).__name__} is not a network of any family ({sorted(NETWORKS)})")


def load_official(net: nn.Module, state_dict: StateDictSource) -> nn.Module:
    """Load a state dict in the layout of ``net``'s official repository (a mapping or a path), strictly."""
    return family_of(net).load_official(state_dict, net)
