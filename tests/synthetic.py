"""The tests' synthetic datasets; the generators ship with the package in ``desam_nnu.demo``."""
from desam_nnu.demo import ROTATED, make_dataset, make_demo_dataset, synthetic_case, write_nifti

__all__ = ["ROTATED", "make_dataset", "make_demo_dataset", "synthetic_case", "write_nifti"]
