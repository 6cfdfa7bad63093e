"""What the planner needs to know about a backbone, without building it.

TEMPORARY static table; to be derived from desam_nnu.model.backbones.
"""
from dataclasses import dataclass
from typing import List, Tuple

from desam_nnu.errors import DeSAMInputError

SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class BackboneFacts:
    name: str
    native_image_size: int
    feature_stride: int
    encoder_embed_dim: int
    num_intermediate: int
    neck_dim: int
    pixel_mean: Tuple[float, float, float] = SAM_PIXEL_MEAN
    pixel_std: Tuple[float, float, float] = SAM_PIXEL_STD

    def feature_shapes(self, image_size: int) -> List[Tuple[int, int, int]]:
        g = image_size // self.feature_stride
        return [(self.encoder_embed_dim, g, g)] * self.num_intermediate + [(self.neck_dim, g, g)]


_FACTS = {
    "vit_b": BackboneFacts("vit_b", 1024, 16, 768, 3, 256),
    "vit_l": BackboneFacts("vit_l", 1024, 16, 1024, 3, 256),
    "vit_h": BackboneFacts("vit_h", 1024, 16, 1280, 3, 256),
    "tiny": BackboneFacts("tiny", 1024, 16, 96, 3, 64),
}


def backbone_facts(name: str) -> BackboneFacts:
    if name not in _FACTS:
        raise DeSAMInputError(f"unknown backbone {name!r}; choose one of {', '.join(_FACTS)}")
    return _FACTS[name]
