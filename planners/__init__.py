"""Planning and preprocessing for DeSAM; installed as ``desam_nnu.planners``.

DeSAMPlanner (an nnU-Net ExperimentPlanner), DeSAMPreprocessor and SAM's intensity mappings as
nnU-Net normalisation schemes, plus the plans manager that resolves them by name.

The names are imported lazily: nnU-Net's spawned preprocessing workers import this package to unpickle
DeSAMPreprocessor, and the planner (which imports the networks, segment_anything and torchvision) would
double each worker's start-up (11 s against 6 s on a 2-core CPU).
"""
from importlib import import_module
from typing import Any

_WHERE = {"SAMCTNormalization": "normalization", "SAMPercentileNormalization": "normalization",
          "DeSAMPlanner": "planner", "DeSAMPlansManager": "plans", "DeSAMConfigurationManager": "plans",
          "DeSAMPreprocessor": "preprocessor"}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(f"desam_nnu.planners.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'desam_nnu.planners' has no attribute {name!r}")
