"""Plans and configuration managers that resolve our classes by name.

nnU-Net 2.8.1 looks preprocessor and planner classes up by name inside its own package only
(``ConfigurationManager.preprocessor_class``, ``PlansManager.experiment_planner_class``). These
subclasses override just those lookups, trying ours first, and add typed access to the DeSAM
section (``desam_nnu.config.DeSAMConfig``). Trainer and predictor use ``DeSAMPlansManager``.
"""
from functools import lru_cache
from typing import Type

from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from desam_nnu.config import DeSAMConfig
from desam_nnu.planners.planner import DeSAMPlanner
from desam_nnu.planners.preprocessor import DeSAMPreprocessor

PREPROCESSORS = {c.__name__: c for c in (DeSAMPreprocessor,)}
PLANNERS = {c.__name__: c for c in (DeSAMPlanner,)}


class DeSAMConfigurationManager(ConfigurationManager):
    @property
    def preprocessor_class(self) -> Type:
        return PREPROCESSORS.get(self.preprocessor_name) or super().preprocessor_class

    @property
    def desam(self) -> DeSAMConfig:
        return DeSAMConfig.from_configuration(self.configuration)


class DeSAMPlansManager(PlansManager):
    @lru_cache(maxsize=10)
    def get_configuration(self, configuration_name: str) -> DeSAMConfigurationManager:
        return DeSAMConfigurationManager(super().get_configuration(configuration_name).configuration)

    @property
    def experiment_planner_class(self) -> Type:
        return PLANNERS.get(self.experiment_planner_name) or super().experiment_planner_class
