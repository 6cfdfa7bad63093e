"""Planning and preprocessing for DeSAM; installed as ``desam_nnu.planners``.

DeSAMPlanner (an nnU-Net ExperimentPlanner), DeSAMPreprocessor and SAM's intensity mappings as
nnU-Net normalisation schemes, plus the plans manager that resolves them by name.
"""
from desam_nnu.planners.normalization import SAMCTNormalization, SAMPercentileNormalization
from desam_nnu.planners.planner import DeSAMPlanner
from desam_nnu.planners.plans import DeSAMConfigurationManager, DeSAMPlansManager
from desam_nnu.planners.preprocessor import DeSAMPreprocessor

__all__ = ["DeSAMPlanner", "DeSAMPreprocessor", "DeSAMPlansManager", "DeSAMConfigurationManager",
           "SAMPercentileNormalization", "SAMCTNormalization"]
