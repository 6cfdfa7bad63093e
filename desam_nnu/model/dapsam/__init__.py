"""DAPSAM (wkklavis/DAPSAM): SAM with adapters and a prototype prompt generator; prompt-free."""
from .build import NATIVE_IMAGE_SIZE, build_dapsam, dapsam_config, load_official_dapsam, load_sam_into_dapsam
from .network import DAPSAM, DAPSAMEncoder, PrototypePromptGenerator

__all__ = ["DAPSAM", "DAPSAMEncoder", "NATIVE_IMAGE_SIZE", "PrototypePromptGenerator", "build_dapsam",
           "dapsam_config", "load_official_dapsam", "load_sam_into_dapsam"]
