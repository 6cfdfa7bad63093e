"""Per-case checks of a raw dataset, each problem as one line naming the file.

nnU-Net's own checks print multi-line reports and assert deep inside worker processes, where the
failing file is lost. These checks read each case with nnU-Net's reader and say which file is
bad and why. They run up front with ``--verify_dataset_integrity``, and otherwise only after
fingerprinting or preprocessing failed, to name the culprit (so the happy path reads nothing twice).
"""
import multiprocessing
import os
import struct
import zlib
from typing import Dict, List, Optional, Sequence, Type

import nibabel as nib
import numpy as np
from nnunetv2.imageio.base_reader_writer import BaseReaderWriter
from tqdm import tqdm

from desam_nnu.errors import DeSAMInputError

REQUIRED_DATASET_JSON_KEYS = ("channel_names", "labels", "numTraining", "file_ending")
GEOMETRY_TOLERANCE = 1e-3


def check_dataset_json(dataset_json: dict, path: str) -> None:
    """Raise if dataset.json lacks a key nnU-Net needs ('modality' is nnU-Net's old name for channel_names)."""
    present = set(dataset_json) | ({"channel_names"} if "modality" in dataset_json else set())
    missing = [k for k in REQUIRED_DATASET_JSON_KEYS if k not in present]
    if missing:
        raise DeSAMInputError(f"{path}: missing required key(s) {', '.join(missing)}")
    if not isinstance(dataset_json["labels"], dict) or "background" not in dataset_json["labels"]:
        raise DeSAMInputError(f"{path}: 'labels' must be a dict with a 'background' entry (value 0)")


def truncated_nifti(path: str) -> Optional[str]:
    """Why a NIfTI file is shorter than its header promises, or None.

    SimpleITK (nnU-Net's reader) silently zero-fills a truncated ``.nii.gz``, so an interrupted
    download would train as black slices. This check is O(1) per file: it compares the size the
    header implies with the file size, or for gzip with the stored uncompressed size (ISIZE, the
    last 4 bytes, garbage in a truncated file); only a mismatch costs a full decompression to confirm.
    """
    if not path.endswith((".nii", ".nii.gz")):
        return None
    try:
        image = nib.load(path)
        expected = int(image.dataobj.offset) + int(np.prod(image.shape)) * image.get_data_dtype().itemsize
    except Exception as e:
        return f"unreadable NIfTI header ({type(e).__name__}: {' '.join(str(e).split())[:200]})"
    if not path.endswith(".gz"):
        size = os.path.getsize(path)
        return None if size >= expected else f"truncated: {size} bytes, the header needs {expected}"
    if expected >= 2 ** 32:
        return None  # ISIZE is the size modulo 2**32: not informative here
    with open(path, "rb") as f:
        f.seek(-4, os.SEEK_END)
        isize = struct.unpack("<I", f.read(4))[0]
    if isize == expected:
        return None  # the common case; anything else (trailing bytes, several gzip members) is decompressed
    decompressor, total = zlib.decompressobj(16 + zlib.MAX_WBITS), 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            total += len(decompressor.decompress(chunk))
    if not decompressor.eof or total < expected:
        return f"truncated or corrupt gzip: {total} of {expected} bytes decompress"
    return None


def nan_voxels(path: str, data: Optional[np.ndarray] = None) -> int:
    """How many NaN voxels an image file holds.

    SimpleITK's NIfTI reader (nnU-Net's default) turns NaN into 0 without a word, so for float
    NIfTI files the voxels are read again with nibabel, which keeps them; integer files cannot hold
    NaN. For other formats ``data`` (what nnU-Net's reader returned) is checked.
    """
    if path.endswith((".nii", ".nii.gz")):
        image = nib.load(path)
        if image.get_data_dtype().kind != "f":
            return 0
        return int(np.isnan(np.asanyarray(image.dataobj)).sum())
    return int(np.isnan(data).sum()) if data is not None and data.dtype.kind == "f" else 0


def check_files_complete(dataset: Dict[str, dict]) -> None:
    """Raise for the first truncated NIfTI among all images and labels (cheap; always run)."""
    for case in dataset.values():
        for f in (*case["images"], case["label"]):
            problem = truncated_nifti(f)
            if problem:
                raise DeSAMInputError(f"{f}: unreadable or corrupt image ({problem})")


def declared_label_values(labels: dict) -> List[int]:
    """Every voxel value dataset.json allows; region labels (lists) contribute each of their values."""
    values = set()
    for v in labels.values():
        values.update(v if isinstance(v, (list, tuple)) else [v])
    return sorted(int(v) for v in values)


def _geometry_mismatch(img_props: dict, seg_props: dict) -> Optional[str]:
    for what in ("spacing",):
        a, b = np.asarray(img_props[what], float), np.asarray(seg_props[what], float)
        if a.shape != b.shape or not np.allclose(a, b, atol=GEOMETRY_TOLERANCE):
            return f"{what} {tuple(a.round(4))} vs {tuple(b.round(4))}"
    si, ss = img_props.get("sitk_stuff"), seg_props.get("sitk_stuff")
    if si and ss:
        for what in ("origin", "direction"):
            a, b = np.asarray(si[what], float), np.asarray(ss[what], float)
            if not np.allclose(a, b, atol=GEOMETRY_TOLERANCE):
                return f"{what} {tuple(a.round(4))} vs {tuple(b.round(4))}"
    return None


def check_case(image_files: Sequence[str], label_file: Optional[str], reader_writer_class: Type[BaseReaderWriter],
               num_channels: int, allowed_labels: Optional[Sequence[int]], full: bool) -> List[str]:
    """Problems of one case, each one line starting with the file it concerns.

    Always: readable, no NaN, channel count. ``full`` (--verify_dataset_integrity) adds image/label
    geometry and label values not declared in dataset.json.
    """
    rw = reader_writer_class()
    problems: List[str] = []
    if len(image_files) != num_channels:
        problems.append(f"{image_files[0] if image_files else label_file}: {len(image_files)} channel file(s), "
                        f"dataset.json declares {num_channels}")
    images = []
    for f in image_files:
        truncated = truncated_nifti(f)
        if truncated:
            problems.append(f"{f}: unreadable or corrupt image ({truncated})")
            continue
        try:
            data, props = rw.read_images([f])
        except Exception as e:  # nnU-Net's readers raise anything from RuntimeError to EOFError
            problems.append(f"{f}: unreadable or corrupt image ({type(e).__name__}: {' '.join(str(e).split())[:200]})")
            continue
        nans = nan_voxels(f, data)
        if nans:
            problems.append(f"{f}: image contains {nans} NaN voxel(s)")
        images.append((f, data, props))
    if label_file is None:
        return problems
    truncated = truncated_nifti(label_file)
    if truncated:
        return problems + [f"{label_file}: unreadable or corrupt label ({truncated})"]
    try:
        seg, seg_props = rw.read_seg(label_file)
    except Exception as e:
        return problems + [f"{label_file}: unreadable or corrupt label ({type(e).__name__}: "
                           f"{' '.join(str(e).split())[:200]})"]
    nans = nan_voxels(label_file, seg)
    if nans:
        problems.append(f"{label_file}: label contains {nans} NaN voxel(s)")
    if not full:
        return problems
    for f, data, props in images:
        if data.shape[1:] != seg.shape[1:]:
            problems.append(f"{label_file}: geometry mismatch with {f}: shape {seg.shape[1:]} vs {data.shape[1:]}")
            continue
        mismatch = _geometry_mismatch(props, seg_props)
        if mismatch:
            problems.append(f"{label_file}: geometry mismatch with {f}: {mismatch}")
    if allowed_labels is not None:
        found = np.unique(seg[~np.isnan(seg)] if seg.dtype.kind == "f" else seg)
        bad = [int(v) if float(v).is_integer() else float(v) for v in sorted(set(found.tolist()) - set(allowed_labels))]
        if bad:
            problems.append(f"{label_file}: label value(s) {bad} not declared in dataset.json "
                            f"(declared: {list(allowed_labels)})")
    return problems


def check_dataset(dataset: Dict[str, dict], dataset_json: dict, reader_writer_class: Type[BaseReaderWriter],
                  num_processes: int, full: bool) -> List[str]:
    """Check every case with ``num_processes`` workers; returns all problems (empty if none)."""
    num_channels = len(dataset_json.get("channel_names", dataset_json.get("modality", {})))
    allowed = declared_label_values(dataset_json["labels"]) if full else None
    args = [(v["images"], v.get("label"), reader_writer_class, num_channels, allowed, full) for v in dataset.values()]
    if num_processes <= 1 or len(args) < 2:
        results = [check_case(*a) for a in tqdm(args, desc="Checking cases")]
    else:
        with multiprocessing.get_context("spawn").Pool(num_processes) as pool:
            results = list(tqdm(pool.imap(_check_case_star, args), total=len(args), desc="Checking cases"))
    return [p for r in results for p in r]


def _check_case_star(args: tuple) -> List[str]:
    return check_case(*args)


def raise_if_problems(problems: List[str]) -> None:
    """One error for all problems: the first in full, then how many more."""
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise DeSAMInputError(problems[0] + more)
