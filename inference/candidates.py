"""Stored validation candidates: what ``desam_find_best_configuration`` selects from without a network.

The final validation (``desam_train``, also ``--val``) predicts each validation case once and, per
informative tile, in the order nnU-Net's sliding window calls the network, keeps:

- ``grid_logits [T, K, C, p, p]`` float32: per class, the logits (resized to the patch) of the K best
  grid prompts for that class whatever their predicted IoU (K = the largest top-k in the plans'
  search, 3 by default);
- ``grid_iou [T, K, C]`` float32: their predicted IoUs, best first;
- ``box [T, C, p, p]`` float32: the whole-box probabilities, when the model was trained for boxes;
- ``fingerprint [T, 2]`` float64: two sums of the tile, checked at replay.

Any IoU threshold and any top-k <= K is then a selection over these arrays
(:func:`desam_nnu.inference.prompted.grid_probabilities`), and nnU-Net's own sliding window, export
and metrics run on the composed outputs (:class:`CandidateReplay`): a sweep costs what the
sliding-window bookkeeping and export cost, never a network run. One ``CASE.npz`` per validation
case under ``fold_N/validation/desam_candidates/``; ``meta.json`` is written last and marks the
fold's store complete. Size: T x (K + 1) x C x p x p x 4 bytes per case (hippocampus, medsam_lite:
about 36 tiles x 4 x 2 x 56 x 56 x 4 = 3.6 MB a case).
"""
import json
import os
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from desam_nnu.atomic import atomic_path, atomic_write_json
from desam_nnu.errors import DeSAMInputError
from desam_nnu.inference.prompted import (CandidateRecord, PromptSettings, TileCandidates, TileNetwork,
                                          tile_fingerprint)

STORE_VERSION = 1
FOLDER = "desam_candidates"
META = "meta.json"
FINGERPRINT_RTOL = 1e-6


def store_folder(validation_folder: str) -> str:
    return os.path.join(validation_folder, FOLDER)


def save_case(record: CandidateRecord, path: str) -> int:
    """Write one case's record whole or not at all; returns the bytes written."""
    tiles = record.tiles
    arrays: Dict[str, np.ndarray] = {
        "fingerprint": np.asarray([t.fingerprint for t in tiles], np.float64).reshape(len(tiles), 2)}
    if "grid" in record.modes:
        arrays["grid_logits"] = _stack([t.grid_logits for t in tiles], np.float32)
        arrays["grid_iou"] = _stack([t.grid_iou for t in tiles], np.float32)
    if "box" in record.modes:
        arrays["box"] = _stack([t.box for t in tiles], np.float32)
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)
    return os.path.getsize(path)


def _stack(tensors: List[Tensor], dtype) -> np.ndarray:
    return np.stack([t.detach().cpu().numpy().astype(dtype) for t in tensors]) if tensors else np.zeros((0,), dtype)


def load_case(path: str, modes: Tuple[str, ...], top_k: int) -> CandidateRecord:
    """One case's stored record; a damaged file is named in a one-line error."""
    try:
        with np.load(path) as z:
            fingerprints = z["fingerprint"]
            grid_logits = z["grid_logits"] if "grid" in modes else None
            grid_iou = z["grid_iou"] if "grid" in modes else None
            box = z["box"] if "box" in modes else None
    except Exception as e:
        raise DeSAMInputError(f"{path}: unreadable stored validation candidates ({type(e).__name__}: {e}); "
                              f"rerun desam_train DATASET FOLD --val") from e
    record = CandidateRecord(modes=modes, top_k=top_k)
    for i, fp in enumerate(fingerprints):
        record.tiles.append(TileCandidates(
            fingerprint=(float(fp[0]), float(fp[1])),
            box=None if box is None else torch.from_numpy(box[i]),
            grid_logits=None if grid_logits is None else torch.from_numpy(grid_logits[i]),
            grid_iou=None if grid_iou is None else torch.from_numpy(grid_iou[i])))
    return record


def load_grid_iou(path: str) -> np.ndarray:
    """Only the predicted IoUs [T, K, C] of a stored case: enough to tell which settings give equal outputs."""
    with np.load(path) as z:
        return z["grid_iou"]


def write_meta(folder: str, meta: dict) -> None:
    atomic_write_json(dict(meta, version=STORE_VERSION), os.path.join(folder, META))


def read_meta(folder: str) -> Optional[dict]:
    """The fold's store description, or None when the fold has no complete store."""
    path = os.path.join(folder, META)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            meta = json.load(f)
        if meta.get("version") != STORE_VERSION:
            return None
        return meta
    except (OSError, ValueError):
        return None


class CandidateReplay(TileNetwork):
    """The tile network of a stored case: nnU-Net's sliding window calls it as it called DeSAM, and each
    informative tile's output is composed from the record for ``prompts``, with no network at all.

    A tile is found by its fingerprint among the stored tiles not used yet, not by its place: with many
    tiles per call and mirroring, the order of the calls depends on how many tiles a call took, which
    depends on the device (``inference/tiles.py``). Equal fingerprints are equal tiles, with equal records."""

    def __init__(self, num_classes: int, record: CandidateRecord, prompts: PromptSettings, case: str) -> None:
        super().__init__(num_classes)
        self.record, self.prompts, self.case = record, prompts, case
        self.fingerprints = np.asarray([t.fingerprint for t in record.tiles], np.float64).reshape(-1, 2)
        self.used = np.zeros(len(record.tiles), bool)

    def _probabilities(self, tiles: Tensor) -> Tensor:
        out = torch.zeros((len(tiles), self.num_classes, *tiles.shape[-2:]))
        for i in range(len(tiles)):
            if self.used.all():
                raise DeSAMInputError(f"{self.case}: stored candidates hold {len(self.record.tiles)} tiles, the "
                                      f"sliding window asks for more; rerun desam_train DATASET FOLD --val")
            match = np.isclose(self.fingerprints, tile_fingerprint(tiles[i]), rtol=FINGERPRINT_RTOL,
                               atol=1e-9).all(1) & ~self.used
            if not match.any():
                raise DeSAMInputError(f"{self.case}: a tile differs from every one whose candidates were stored "
                                      f"(preprocessed data changed?); rerun desam_train DATASET FOLD --val")
            j = int(np.argmax(match))
            self.used[j] = True
            out[i] = self.record.compose(self.record.tiles[j], self.prompts, self)
        return out

    def check_finished(self) -> None:
        if not self.used.all():
            raise DeSAMInputError(f"{self.case}: the sliding window used {int(self.used.sum())} of "
                                  f"{len(self.record.tiles)} stored tiles; rerun desam_train DATASET FOLD --val")
