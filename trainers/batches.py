"""The trainer's in-process batch iterator: features from the embedding cache, or patches for online
encoding (augmented by nnU-Net's transforms); kept apart from ``base.py`` to keep each file to one concern."""
from typing import TYPE_CHECKING, Dict, List, Optional

import numpy as np
import torch

from desam_nnu.errors import DeSAMInputError
from desam_nnu.trainers.augmentation import augment_patches
from desam_nnu.trainers.slices import load_case_patches

if TYPE_CHECKING:
    from desam_nnu.trainers.base import SAMFamilyTrainer


class _Batches:
    """An endless in-process batch iterator over one split's items (what ``next(dataloader)`` gives).

    Cached mode reads features for the batch's items from memory-mapped cache files; online mode
    reads the patches from nnU-Net's preprocessed arrays.
    """

    def __init__(self, trainer: "SAMFamilyTrainer", dataset, keys: List[str], rng: np.random.Generator,
                 transforms=None, online: bool = False) -> None:
        self.trainer, self.dataset, self.rng = trainer, dataset, rng
        self.transforms = transforms  # nnU-Net's augmentation, online batches only
        self.online = online or not trainer.use_cache
        items = trainer.items
        in_split = np.isin(np.asarray(items.cases)[items.case_of_item], list(keys))
        self.foreground = np.flatnonzero(in_split & items.has_foreground)
        self.empty = np.flatnonzero(in_split & ~items.has_foreground)
        if not len(self.foreground) and not len(self.empty):
            raise DeSAMInputError(f"no training slices for cases {list(keys)[:3]}...")
        self.generator = torch.Generator().manual_seed(int(rng.integers(2 ** 31)))

    def __iter__(self):
        return self

    def _draw(self, n: int) -> np.ndarray:
        frac = self.trainer.empty_slice_fraction if len(self.empty) else 0.0
        if not len(self.foreground):
            frac = 1.0
        take_empty = self.rng.random(n) < frac
        out = np.empty(n, np.int64)
        out[take_empty] = self.rng.choice(self.empty, take_empty.sum()) if take_empty.any() else []
        out[~take_empty] = self.rng.choice(self.foreground, (~take_empty).sum()) if (~take_empty).any() else []
        return out

    def __next__(self) -> dict:
        t, items = self.trainer, self.trainer.items
        chosen = self._draw(t.batch_size)
        by_case: Dict[int, List[int]] = {}
        for pos, g in enumerate(chosen):
            by_case.setdefault(int(items.case_of_item[g]), []).append(pos)
        seg = np.empty((len(chosen), *t.desam.patch_size), np.int64)
        features: Optional[List[torch.Tensor]] = None
        images: Optional[np.ndarray] = None
        for case_idx, positions in by_case.items():
            case = items.cases[case_idx]
            local = items.local_index[chosen[positions]]
            if not self.online:
                cached = t.cached_case(self.dataset, case)
                feats = cached.features(local)
                seg[positions] = np.asarray(cached.extras["seg"][np.asarray(local)])
                if features is None:
                    features = [torch.empty((len(chosen), *f.shape[1:]), dtype=f.dtype) for f in feats]
                for level, f in enumerate(feats):
                    features[level][positions] = f
            else:
                patches = load_case_patches(self.dataset, case, items.position[chosen[positions]],
                                            t.desam.patch_size[0])
                if images is None:
                    images = np.empty((len(chosen), *patches["images"].shape[1:]), np.float32)
                images[positions] = patches["images"]
                seg[positions] = patches["seg"]
        if images is not None and self.transforms is not None:
            images, seg = augment_patches(self.transforms, images, seg)
        return {"features": features, "images": torch.from_numpy(images) if images is not None else None,
                "seg": torch.from_numpy(seg), "generator": self.generator}
