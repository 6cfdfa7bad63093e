"""nnU-Net's folder variables and dataset ids, checked up front with one-line errors.

nnU-Net itself fails late and verbosely when ``nnUNet_raw`` is unset or a dataset id is unknown;
every desam command resolves these first.
"""
import json
import os
import re
from typing import Dict, Optional, Union

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
    # not nnU-Net's maybe_convert_to_dataset_name: that searches all three nnU-Net folders and raises a
    # RuntimeError; a command needs the dataset in its own folder, and a one-line error listing what is there
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


def link_dataset_subset(source: str, raw_root: str, num_cases: Optional[int] = None) -> str:
    """Link the first ``num_cases`` cases (by label file name) of a raw dataset into ``raw_root``.

    For tests, benchmarks and demos on part of a dataset without copying it: images and labels are
    symlinks, dataset.json is rewritten with the new ``numTraining``. Returns the new dataset folder.
    """
    with open(os.path.join(source, "dataset.json")) as f:
        dataset_json = json.load(f)
    ending = dataset_json["file_ending"]
    target = os.path.join(raw_root, os.path.basename(os.path.normpath(source)))
    os.makedirs(os.path.join(target, "imagesTr"))
    os.makedirs(os.path.join(target, "labelsTr"))
    labels = sorted(f for f in os.listdir(os.path.join(source, "labelsTr")) if f.endswith(ending))[:num_cases]
    channels = len(dataset_json.get("channel_names", dataset_json.get("modality", {})))
    for f in labels:
        case = f[: -len(ending)]
        os.symlink(os.path.join(source, "labelsTr", f), os.path.join(target, "labelsTr", f))
        for c in range(channels):
            name = f"{case}_{c:04d}{ending}"
            os.symlink(os.path.join(source, "imagesTr", name), os.path.join(target, "imagesTr", name))
    dataset_json["numTraining"] = len(labels)
    with open(os.path.join(target, "dataset.json"), "w") as f:
        json.dump(dataset_json, f, indent=2)
    return target
