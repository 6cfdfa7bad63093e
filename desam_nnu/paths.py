"""nnU-Net's folder variables and dataset ids, checked up front with one-line errors.

nnU-Net itself fails late and verbosely when ``nnUNet_raw`` is unset or a dataset id is unknown;
every desam command resolves these first.
"""
import os
import re
from typing import Dict, Union

from desam_nnu.errors import DeSAMInputError

DATASET_DIR = re.compile(r"^Dataset(\d{3})_(.+)$")


def env_dir(variable: str, must_exist: bool = True) -> str:
    """The folder named by an nnU-Net environment variable; an error if unset (or missing)."""
    value = os.environ.get(variable)
    if not value:
        raise DeSAMInputError(f"{variable} is not set: export {variable}=/path/to/folder "
                              f"(nnU-Net's folder layout; see the README)")
    if must_exist and not os.path.isdir(value):
        raise DeSAMInputError(f"{variable}={value}: folder does not exist")
    return value


def datasets_in(folder: str) -> Dict[int, str]:
    """Dataset id -> folder name for every DatasetXXX_Name folder in ``folder``."""
    found: Dict[int, str] = {}
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        m = DATASET_DIR.match(name)
        if m and os.path.isdir(os.path.join(folder, name)):
            found.setdefault(int(m.group(1)), name)
    return found


def resolve_dataset_name(dataset: Union[int, str], folder: str) -> str:
    """``4``, ``'4'``, ``'004'`` or ``'Dataset004_Hippocampus'`` -> the folder name in ``folder``."""
    available = datasets_in(folder)
    text = str(dataset).strip()
    m = DATASET_DIR.match(text)
    if m:
        dataset_id = int(m.group(1))
    elif text.isdigit():
        dataset_id = int(text)
    else:
        raise DeSAMInputError(f"dataset {text!r}: give an id such as 4 or a name such as Dataset004_Hippocampus")
    if dataset_id in available and (not m or available[dataset_id] == text):
        return available[dataset_id]
    listing = ", ".join(f"{i} ({n})" for i, n in available.items()) or "none"
    raise DeSAMInputError(f"dataset {text!r} not found in {folder}; datasets there: {listing}")
