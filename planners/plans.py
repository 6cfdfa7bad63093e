"""Plans and configuration managers that resolve our classes by name.

nnU-Net 2.8.1 looks preprocessor and planner classes up by name inside its own package only
(``ConfigurationManager.preprocessor_class``, ``PlansManager.experiment_planner_class``). These
subclasses override just those lookups, trying ours first, and add typed access to the DeSAM
section (``desam_nnu.config.DeSAMConfig``). Trainer and predictor use ``DeSAMPlansManager``.
"""
from functools import lru_cache
from typing import Type

import torch
from nnunetv2.utilities.label_handling.label_handling import LabelManager
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from desam_nnu.config import DeSAMConfig, plans_configuration
from desam_nnu.model.registry import network_family
from desam_nnu.planners.planner import DeSAMPlanner
from desam_nnu.planners.preprocessor import DeSAMPreprocessor

PREPROCESSORS = {c.__name__: c for c in (DeSAMPreprocessor,)}
PLANNERS = {c.__name__: c for c in (DeSAMPlanner,)}


def desam_probabilities(outputs: torch.Tensor) -> torch.Tensor:
    """DeSAM's prediction outputs -> per-label probabilities, as nnU-Net's inference nonlinearity.

    The predictor's network outputs ``[0.5, p_1, ..., p_C]``: the sigmoid probability of each class
    (DeSAM is multi-label) behind a constant 0.5 background channel, so that nnU-Net's argmax
    (taken on these outputs, averaged over tiles, mirrors and folds) gives DeSAM's rule: the most
    probable class where it reaches 0.5, background elsewhere. For ``--save-probabilities`` the
    background channel becomes ``1 - max_c p_c``, which keeps that argmax.
    """
    probabilities = outputs.clone()
    probabilities[0] = 1 - outputs[1:].max(0).values
    return probabilities


def mixture_probabilities(outputs: torch.Tensor) -> torch.Tensor:
    """MaskSAM's prediction outputs (its semantic mixture, sum over queries of softmax(class) * sigmoid(mask), one
    channel per label, background included) -> per-label probabilities: normalised to sum 1, which keeps the
    official argmax (its export takes a softmax of the mixture, which keeps it too)."""
    return outputs / outputs.sum(0, keepdim=True).clamp_min(1e-8)


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

    def get_label_manager(self, dataset_json: dict, **kwargs) -> LabelManager:
        """nnU-Net's label manager with the family's output-to-probability mapping: ``desam_probabilities`` for the
        2D families' [0.5, p_1, ..., p_C], ``mixture_probabilities`` for MaskSAM's mixture."""
        family = self.plans["configurations"][plans_configuration(self.plans)]["desam"].get("family", "desam")
        mixture = network_family(family).prediction_outputs == "mixture"
        kwargs.setdefault("inference_nonlin", mixture_probabilities if mixture else desam_probabilities)
        return super().get_label_manager(dataset_json, **kwargs)

    @property
    def experiment_planner_class(self) -> Type:
        return PLANNERS.get(self.experiment_planner_name) or super().experiment_planner_class
