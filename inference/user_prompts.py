"""User prompts for ``desam_predict --prompts PROMPTS.json``: read, checked, and mapped into the preprocessed grid.

The file (``desam_nnu/schemas/prompts.schema.json``; README, "Prompts from a file") gives per case and class
boxes with a slice range and clicks, in the image's voxel indices (x, y, z as ITK reads it) or in world
millimetres. Every problem is found before any prediction starts and reported one line each, naming the
case and field. At prediction time each prompt is carried through what nnU-Net's preprocessing did to the
image (the plans' transpose, the crop to the non-zero region, the resampling) onto the preprocessed slices.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from itertools import product
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from desam_nnu.config import DeSAMConfig
from desam_nnu.errors import DeSAMInputError
from desam_nnu.inference.prompt_free import PromptFreeTiles
from desam_nnu.inference.prompted import DeSAMTiles
from desam_nnu.model import DeSAM
from desam_nnu.rgb import network_input

Vec3 = Tuple[float, float, float]
READERS = ("SimpleITKIO", "NibabelIO")  # readers whose arrays are the file's voxels as [z, y, x], unreoriented


class PromptsFileError(DeSAMInputError):
    """Every problem of a prompts file, one ``error:`` line each (the command prints the first prefix)."""

    def __init__(self, problems: Sequence[str]) -> None:
        ValueError.__init__(self, "\nerror: ".join(problems))
        self.problems = list(problems)


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in continuous voxel indices (x, y, z), corners included."""
    lo: Vec3
    hi: Vec3


@dataclass(frozen=True)
class Point:
    xyz: Vec3  # continuous voxel indices
    positive: bool = True


@dataclass
class CasePrompts:
    """One case's prompts by class label, in voxel indices of its image."""
    boxes: Dict[int, List[Box]] = field(default_factory=dict)
    points: Dict[int, List[Point]] = field(default_factory=dict)


@dataclass
class SlicePrompts:
    """One class's prompts on one preprocessed slice, in its pixels: boxes (x0, y0, x1, y1) with x the column,
    points (x, y) with their labels (1 positive, 0 negative)."""
    boxes: List[Tuple[float, float, float, float]] = field(default_factory=list)
    points: List[Tuple[float, float, int]] = field(default_factory=list)


def schema() -> dict:
    """The shipped JSON Schema of the prompts file."""
    return json.loads(resources.files("desam_nnu").joinpath("schemas/prompts.schema.json").read_text())


def _field(path: Sequence) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def read_prompts(path: str, images: Mapping[str, Optional[str]], labels: Sequence[int],
                 kinds: Sequence[str] = ("boxes", "points")) -> Dict[str, CasePrompts]:
    """The prompts of ``path`` for the cases of ``images`` (case -> its first image file; None: a case that
    fails on its own, whose prompts are not checked), checked against the schema, the cases, the model's class
    ``labels``, the ``kinds`` of prompt it takes and each image's extent; PromptsFileError lists every problem."""
    import jsonschema

    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise PromptsFileError([f"{path}: prompts file not found"]) from None
    except (OSError, ValueError) as e:
        raise PromptsFileError([f"{path}: not a JSON file ({e})"]) from None
    problems = [f"{path}: {_field(e.absolute_path)}: {e.message}"
                for e in sorted(jsonschema.Draft202012Validator(schema()).iter_errors(data), key=lambda e: e.path)]
    if problems:
        raise PromptsFileError(problems)
    world = data.get("coordinates", "voxel") == "world"
    cases = data["cases"]
    problems += [f"{path}: cases.{c}: no such case among the input images" for c in cases if c not in images]
    problems += [f"{path}: cases.{c}: missing (every input case needs an entry; {{}} for none)"
                 for c, file in images.items() if c not in cases and file is not None]
    out: Dict[str, CasePrompts] = {}
    for case, classes in cases.items():
        if images.get(case) is None:
            continue
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(images[case]))
        reader.ReadImageInformation()
        size = reader.GetSize()
        to_index = _world_to_index(reader) if world else None
        prompts = out[case] = CasePrompts()
        for label, given in classes.items():
            where = f"{path}: cases.{case}.{label}"
            if int(label) not in labels:
                problems.append(f"{where}: the model has no class {label} (its classes: "
                                f"{', '.join(map(str, labels))})")
                continue
            problems += [f"{where}.{kind}: the model takes {' and '.join(kinds)} only" for kind in given
                         if kind not in kinds and given[kind]]
            for i, b in enumerate(given.get("boxes", [])):
                (x0, y0, x1, y1), (z0, z1) = b["box"], b["slices"]
                if x0 > x1 or y0 > y1 or z0 > z1:
                    problems.append(f"{where}.boxes[{i}]: corners out of order (x0 <= x1, y0 <= y1, z0 <= z1)")
                    continue
                corners = [(x, y, z) for x, y, z in product((x0, x1), (y0, y1), (z0, z1))]
                idx = np.array([to_index(c) for c in corners] if world else corners, dtype=float)
                box = Box(tuple(idx.min(0)), tuple(idx.max(0)))
                problems += _outside(f"{where}.boxes[{i}]", [box.lo, box.hi], size)
                prompts.boxes.setdefault(int(label), []).append(box)
            for i, p in enumerate(given.get("points", [])):
                xyz = tuple(to_index(p["point"]) if world else map(float, p["point"]))
                problems += _outside(f"{where}.points[{i}]", [xyz], size)
                prompts.points.setdefault(int(label), []).append(Point(xyz, p.get("positive", True)))
    if problems:
        raise PromptsFileError(problems)
    return out


def _world_to_index(reader: sitk.ImageFileReader):
    """World (mm) -> continuous voxel index (x, y, z) of the image the reader describes."""
    ref = sitk.Image([1, 1, 1], sitk.sitkUInt8)
    ref.SetSpacing(reader.GetSpacing())
    ref.SetOrigin(reader.GetOrigin())
    ref.SetDirection(reader.GetDirection())
    return lambda p: ref.TransformPhysicalPointToContinuousIndex([float(v) for v in p])


def _outside(where: str, points: Sequence[Vec3], size: Sequence[int]) -> List[str]:
    """A problem when a point lies outside the image's voxels (half a voxel beyond the edge centres)."""
    bad = any(not -0.5 <= v <= n - 0.5 for p in points for v, n in zip(p, size))
    extent = ", ".join(f"{a} 0..{n - 1}" for a, n in zip("xyz", size))
    return [f"{where}: outside the image ({extent} voxels)"] if bad else []


def to_preprocessed(index_xyz: Sequence[float], properties: Mapping, transpose_forward: Sequence[int],
                    preprocessed_shape: Sequence[int]) -> np.ndarray:
    """A continuous voxel index (x, y, z) of the raw image -> the same place in the preprocessed array's
    (d0, d1, d2) indices: transposed as the plans say, moved by the crop, scaled by the resampling (voxel
    centres stay centres: (i + 0.5) * new / old - 0.5)."""
    zyx = np.asarray(index_xyz, dtype=float)[::-1]
    transposed = zyx[list(transpose_forward)]
    crop = np.array([lo for lo, _ in properties["bbox_used_for_cropping"]], dtype=float)
    before = np.asarray(properties["shape_after_cropping_and_before_resampling"], dtype=float)
    scale = np.asarray(preprocessed_shape, dtype=float) / before
    return (transposed - crop + 0.5) * scale - 0.5


def slice_prompts(case: CasePrompts, properties: Mapping, transpose_forward: Sequence[int],
                  preprocessed_shape: Sequence[int]) -> Dict[int, Dict[int, SlicePrompts]]:
    """class -> preprocessed slice (along d0, the 2D configuration's slicing axis) -> its prompts in that
    slice's pixels. A box covers every slice whose centre lies within half a slice of its range; a click
    lands on its nearest slice. Prompts are clipped to the preprocessed array; what falls outside it (the
    cropped-away background) is dropped."""
    shape = np.asarray(preprocessed_shape)
    out: Dict[int, Dict[int, SlicePrompts]] = {}
    for label, boxes in case.boxes.items():
        for box in boxes:
            lo = to_preprocessed(box.lo, properties, transpose_forward, shape)
            hi = to_preprocessed(box.hi, properties, transpose_forward, shape)
            lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
            lo_c, hi_c = np.maximum(lo, 0), np.minimum(hi, shape - 1)
            if (lo_c > hi_c).any():
                continue
            first, last = int(np.ceil(lo[0] - 0.5)), int(np.floor(hi[0] + 0.5))
            for k in range(max(first, 0), min(last, int(shape[0]) - 1) + 1):
                out.setdefault(label, {}).setdefault(k, SlicePrompts()).boxes.append(
                    (float(lo_c[2]), float(lo_c[1]), float(hi_c[2]), float(hi_c[1])))
    for label, points in case.points.items():
        for p in points:
            d0, d1, d2 = to_preprocessed(p.xyz, properties, transpose_forward, shape)
            k = int(np.floor(d0 + 0.5))
            if not (0 <= k < shape[0] and -0.5 <= d1 <= shape[1] - 0.5 and -0.5 <= d2 <= shape[2] - 0.5):
                continue
            out.setdefault(label, {}).setdefault(k, SlicePrompts()).points.append((float(d2), float(d1),
                                                                                   int(p.positive)))
    return out


class PromptsByTile:
    """What a tile network prompted by the user holds: the case's prompts on the preprocessed slices, handed over
    before each case (:meth:`begin_case`), and the tiles' slicers, before each call (:meth:`tiles_at`); a tile gets,
    per class, the prompts of its slice that fall inside it (:meth:`_tile_prompts`). A class with no prompt in the
    tile is background there. Mirroring is off with user prompts (a mirrored tile would need mirrored prompts)."""

    def _reset_prompts(self) -> None:
        self._prompts: Dict[int, Dict[int, SlicePrompts]] = {}
        self._offset = (0, 0)
        self._chunk: List[Tuple] = []

    def begin_case(self, prompts: Dict[int, Dict[int, SlicePrompts]], shape: Sequence[int],
                   patch_size: Sequence[int]) -> None:
        """The case's prompts (:func:`slice_prompts`) and its preprocessed shape [Z, Y, X]: nnU-Net pads a slice
        smaller than the patch evenly on both sides, and the tiles' slicers count in the padded slice."""
        self._prompts = prompts
        self._offset = tuple(max(int(p) - int(s), 0) // 2 for p, s in zip(patch_size, shape[-2:]))

    def tiles_at(self, chunk: Sequence[Tuple]) -> None:
        """The slicers of the tiles of the next call, in order."""
        self._chunk = list(chunk)

    def _informative_slicers(self) -> List[Tuple]:
        """The slicers of the tiles that reached ``_probabilities`` in this call."""
        return [s for s, keep in zip(self._chunk, self._informative.tolist()) if keep]

    def _tile_prompts(self, slicer: Tuple, label: int, p: int) -> Tuple[List[List[float]], List[Tuple]]:
        """The boxes and clicks of class ``label`` inside one tile, in the tile's pixels."""
        k, rows, cols = slicer[1], slicer[2], slicer[3]
        here = self._prompts.get(label, {}).get(int(k))
        if here is None:
            return [], []
        dy, dx = self._offset[0] - rows.start, self._offset[1] - cols.start
        boxes = []
        for x0, y0, x1, y1 in here.boxes:
            box = [max(x0 + dx, 0.0), max(y0 + dy, 0.0), min(x1 + dx, p - 1.0), min(y1 + dy, p - 1.0)]
            if box[0] <= box[2] and box[1] <= box[3]:
                boxes.append(box)
        clicks = [(x + dx, y + dy, positive) for x, y, positive in here.points
                  if -0.5 <= x + dx <= p - 0.5 and -0.5 <= y + dy <= p - 0.5]
        return boxes, clicks


class UserPromptedDeSAM(PromptsByTile, DeSAMTiles):
    """DeSAM as the tile network, prompted by the user's boxes and clicks instead of its automatic mode
    (:class:`PromptsByTile`): each box decoded on its own, all clicks of a class together as one prompt, the
    class's probability the largest of them."""

    def __init__(self, desam: DeSAM, cfg: DeSAMConfig, ensemble: Sequence[DeSAM] = (),
                 encoder_dtype: Optional[torch.dtype] = None) -> None:
        super().__init__(desam, cfg, ensemble, encoder_dtype)
        self._reset_prompts()

    def _probabilities(self, tiles: Tensor) -> Tensor:
        self.tile_calls += tiles.shape[0]
        p = tiles.shape[-1]
        slicers = self._informative_slicers()
        features = self.encode(tiles)
        nets, dev = list(self.ensemble) or [self.desam], tiles.device
        scale = self.cfg.image_size / p
        out = torch.zeros((len(tiles), self.num_classes, p, p), device=dev)
        for i, slicer in enumerate(slicers):
            one = [f[i:i + 1] for f in features]
            for label in range(1, self.num_classes + 1):
                boxes, clicks = self._tile_prompts(slicer, label, p)
                probs = []
                if boxes:
                    xyxy = _to_input(torch.tensor(boxes), scale).to(dev)
                    probs.append(self._decoded(nets, one, label, p, boxes=xyxy))
                if clicks:
                    xy = _to_input(torch.tensor([[x, y] for x, y, _ in clicks]), scale)[None].to(dev)
                    probs.append(self._decoded(nets, one, label, p,
                                               points=(xy, torch.tensor([[c for *_, c in clicks]], device=dev))))
                if probs:
                    out[i, label - 1] = torch.stack(probs).amax(0)
        return out

    @staticmethod
    def _decoded(nets: Sequence[DeSAM], features: List[Tensor], label: int, p: int, **prompt) -> Tensor:
        """Class ``label``'s probability [p, p] at the patch: the largest over the prompts (boxes [n, 4], or one
        set of clicks), each the mean over the folds."""
        n = len(prompt["boxes"]) if "boxes" in prompt else 1
        index = torch.zeros(n, dtype=torch.long, device=features[-1].device)
        logits = torch.stack([net.decode(features, image_index=index, **prompt)[0][:, label - 1] for net in nets])
        probs = torch.sigmoid(F.interpolate(logits.float(), size=(p, p), mode="bilinear", align_corners=False))
        return probs.mean(0).amax(0)


class UserPromptedBoxes(PromptsByTile, PromptFreeTiles):
    """A box-prompted family (DB-SAM) as the tile network, prompted by the user's boxes instead of its automatic
    whole-tile box (:class:`PromptsByTile`): each box of a class decoded on its own with the class's embedding,
    the class's probability the largest of them."""

    def __init__(self, network: nn.Module, cfg: DeSAMConfig) -> None:
        super().__init__(network, cfg)
        self._reset_prompts()

    def _probabilities(self, tiles: Tensor) -> Tensor:
        p, dev = tiles.shape[-1], tiles.device
        x = network_input(tiles.float(), self.cfg.channel_to_rgb, self.cfg.image_size, self.cfg.input_normalisation)
        embeddings = self.network.encode(x)
        out = torch.zeros((len(tiles), self.num_classes, p, p), device=dev)
        for i, slicer in enumerate(self._informative_slicers()):
            for label in range(1, self.num_classes + 1):
                boxes, _ = self._tile_prompts(slicer, label, p)
                if not boxes:
                    continue
                xyxy = _to_input(torch.tensor(boxes), self.cfg.image_size / p)[None].to(dev)  # [1, n, 4]
                classes = torch.full(xyxy.shape[:2], label - 1, dtype=torch.long, device=dev)
                logits = self.network.decode(embeddings[i:i + 1], xyxy, classes)  # [1, n, h, w]
                probs = torch.sigmoid(F.interpolate(logits.float(), size=(p, p), mode="bilinear", align_corners=False))
                out[i, label - 1] = probs[0].amax(0)
        return out


def _to_input(xy: Tensor, scale: float) -> Tensor:
    """Tile pixel coordinates (x, y pairs; boxes as two pairs) -> SAM-input pixels: centre to centre."""
    return (xy.float() + 0.5) * scale - 0.5
