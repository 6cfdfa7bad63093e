"""MaskSAM (Xie et al., arXiv 2403.14103; bxie9/MaskSAM): SAM's ViT over the slices of a 3D patch with
slice-mixing adapters, prompted by boxes and masks that its own prompt generator predicts per query."""
from .adapters import LayerNorm3d, SliceConvAdapter, SliceMLPAdapter
from .decoder import (ClassifierMaskDecoder, SliceAdaptedTwoWayBlock, SliceAdaptedTwoWayTransformer,
                      SlicePromptEncoder)
from .encoder import SliceAdaptedBlock, SliceAdaptedViT
from .network import MaskSAM, SliceAdaptedSam, mask_boxes
from .build import (build_masksam, build_masksam_256, build_slice_adapted_sam, freeze_sam, load_official_masksam,
                    load_sam_into_masksam)
from .patch256 import MaskSAM256

__all__ = ["ClassifierMaskDecoder", "LayerNorm3d", "MaskSAM", "MaskSAM256", "SliceAdaptedBlock", "SliceAdaptedSam",
           "SliceAdaptedTwoWayBlock", "SliceAdaptedTwoWayTransformer", "SliceAdaptedViT", "SliceConvAdapter",
           "SliceMLPAdapter", "SlicePromptEncoder", "build_masksam", "build_masksam_256", "build_slice_adapted_sam",
           "freeze_sam", "load_official_masksam", "load_sam_into_masksam", "mask_boxes"]
