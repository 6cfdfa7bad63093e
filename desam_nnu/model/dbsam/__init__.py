"""DB-SAM (Qin et al., arXiv 2410.04172; AlfredQin/DB-SAM): a frozen SAM ViT (or TinyViT, ours) with a conv
branch, the two mixed by multi-scale deformable attention after every stage and fused before SAM's neck."""
from .conv_branch import ConvBranch
from .deform_attn import (MSDeformAttn, MSDeformCrossAttnBlock, MSMixFFN, multi_scale_deformable_attention,
                          reference_points)
from .fusion import FeatureFusion
from .build import build_dbsam, load_official_dbsam, load_sam_into_dbsam
from .network import DBSAM, DBSAMEncoder, PyramidAdapter, trainable_parameters
from .tinyvit import DBSAMTinyViT

__all__ = ["ConvBranch", "DBSAM", "DBSAMEncoder", "DBSAMTinyViT",
           "FeatureFusion", "MSDeformAttn", "MSDeformCrossAttnBlock", "MSMixFFN",
           "PyramidAdapter", "build_dbsam", "load_official_dbsam", "load_sam_into_dbsam",
           "multi_scale_deformable_attention", "reference_points", "trainable_parameters"]
