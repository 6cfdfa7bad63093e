"""desam-nnu: nnU-Net's self-configuring pipeline with DeSAM as the network.

The public API is ``build_network`` and ``load_official`` (every network family, see
:mod:`desam_nnu.model.registry`), ``build_desam`` and ``load_official_desam`` (DeSAM's shortcuts) and
``__version__``. The model
symbols are imported lazily so that planning and preprocessing (which never touch the
network) do not pay for importing segment_anything and torchvision.
"""
from typing import Any

__version__ = "0.1.0"
__all__ = ["build_network", "load_official", "build_desam", "load_official_desam", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("build_network", "load_official", "build_desam", "load_official_desam"):
        from desam_nnu import model

        return getattr(model, name)
    raise AttributeError(f"module 'desam_nnu' has no attribute {name!r}")
