"""The frozen encoder's features as training reads them: from the embedding cache (float16 or int8) and online."""
import json
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest
import torch
from conftest import planned_tiny_dataset

from desam_nnu.cli.train import train
from desam_nnu.trainers.base import SAMFamilyTrainer
from desam_nnu.trainers.batches import _Batches

DATASET = 41


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Dataset041 planned once for the module (tiny backbone, 64 px input, 40 x 48 slices, 48 px patches)."""
    yield from planned_tiny_dataset(tmp_path_factory, DATASET, 5, (6, 40, 48))


def _picks(batches: _Batches) -> np.ndarray:
    """Four training items of different slices: three with foreground, one without."""
    rng = np.random.default_rng(0)
    return np.concatenate([rng.choice(batches.foreground, 3, replace=False), rng.choice(batches.empty, 1)])


def _batch(batches: _Batches, picks: np.ndarray) -> Dict:
    """The trainer's next batch from ``batches``, its draw fixed to the items ``picks``."""
    batches._draw = lambda n: picks
    return next(batches)


def _online(t: SAMFamilyTrainer, batches: _Batches, picks: np.ndarray,
            monkeypatch: pytest.MonkeyPatch) -> Tuple[np.ndarray, List[torch.Tensor], torch.Tensor]:
    """The online path for ``picks``: an online batch's images (no augmentation) and seg, and the features
    the trainer's ``_forward`` encodes from them in a training step."""
    batch = _batch(_Batches(t, batches.dataset, list(t.items.cases), np.random.default_rng(0), online=True), picks)
    assert batch["features"] is None
    seen: List[List[torch.Tensor]] = []
    net = t.bare_network
    encode = net.encode
    with monkeypatch.context() as m, torch.no_grad():
        m.setattr(net, "encode", lambda x: seen.append(encode(x)) or seen[-1])
        t.network.train()
        t._forward(batch)
    (features,) = seen
    return batch["images"].numpy(), features, batch["seg"]


def _assert_distinct(features: List[torch.Tensor], rtol: float) -> None:
    """No item's features are within ``rtol`` of another's: a wrong slice cannot pass the comparison."""
    for f in features:
        for i in range(len(f)):
            for j in range(len(f)):
                if i != j:
                    assert (f[i] - f[j]).abs().max() > 10 * rtol * f[i].abs().max(), (i, j)


def test_cached_features_equal_the_online_encoding_of_the_same_slice(prepared, monkeypatch):
    """The float16 cache holds, for each item, what the online path encodes from that item's slice of
    nnU-Net's preprocessed array; guards a transposed or shifted slice, patch or item index in either path."""
    t = train(DATASET, 0, device="cpu", cache_only=True)
    assert json.loads((Path(t.cache.folder) / "cache.json").read_text())["dtype"] == "float16"
    t.use_cache = True
    batches, _ = t.get_dataloaders()  # the trainer's cached batches (the cache is complete: nothing to build)
    picks = _picks(batches)
    cached = _batch(batches, picks)
    images, online, seg = _online(t, batches, picks, monkeypatch)
    # the online patches are the items' (z, y0, x0) windows of the preprocessed arrays, zero-padded to the patch
    p = t.desam.patch_size[0]
    for img, g in zip(images, picks):
        data, _, _, _ = batches.dataset.load_case(t.items.cases[t.items.case_of_item[g]])
        z, y0, x0 = (int(v) for v in t.items.position[g])
        part = np.asarray(data[:, z, y0:y0 + p, x0:x0 + p])
        want = np.zeros_like(img)
        want[:, :part.shape[1], :part.shape[2]] = part
        np.testing.assert_array_equal(img, want)
    assert torch.equal(cached["seg"], seg)
    for c, o in zip(cached["features"], online):
        assert c.dtype == torch.float32 and c.shape == o.shape and c.shape[0] == len(picks)
        np.testing.assert_allclose(c.numpy(), o.float().numpy(), rtol=2 ** -10, atol=1e-6)  # float16 rounding
    _assert_distinct(online, 2 ** -10)


def test_an_int8_cache_trains_and_reads_back_within_its_quantisation_error(prepared, monkeypatch):
    """DeSAMTrainer_int8Cache builds an int8 cache (int8 arrays, float32 per-(item, channel) scales), trains on
    it, and the features it reads are int8 levels times the scale, within half a scale of the float encoding."""
    from desam_nnu.trainers.variants import DeSAMTrainer_int8Cache
    # the final validation (whole-volume prediction) is not what this test is about: skipped, for speed
    monkeypatch.setattr(DeSAMTrainer_int8Cache, "perform_actual_validation", lambda self, npz=False: None)
    t = train(DATASET, 0, trainer="DeSAMTrainer_int8Cache", device="cpu", epochs=1, iterations_per_epoch=2,
              val_iterations=1, use_cache=True)
    folder = Path(t.cache.folder)
    assert t.use_cache and t.cache_dtype == "int8"
    assert json.loads((folder / "cache.json").read_text())["dtype"] == "int8"
    cases = sorted(c for c in folder.iterdir() if c.is_dir())
    assert [c.name for c in cases] == sorted(t.items.cases)
    for case in cases:
        meta = json.loads((case / "meta.json").read_text())
        assert meta["dtype"] == "int8"
        for i, (ch, h, w) in enumerate(meta["features"]):
            q, s = np.load(case / f"feat{i}.npy"), np.load(case / f"feat{i}_scale.npy")
            assert q.dtype == np.int8 and q.shape == (meta["num_items"], ch, h, w)
            assert (np.abs(q).max(axis=(2, 3)) == 127).all()  # each (item, channel) spans its scale
            assert s.dtype == np.float32 and s.shape == (meta["num_items"], ch) and (s > 0).all()
    assert np.isfinite(t.logger.get_value("train_losses", step=0))
    assert (Path(t.output_folder) / "checkpoint_final.pth").is_file()

    batches, _ = t.get_dataloaders()
    picks = _picks(batches)
    read = _batch(batches, picks)["features"]
    _, online, _ = _online(t, batches, picks, monkeypatch)
    items = t.items
    for level, (r, o) in enumerate(zip(read, online)):
        scales = np.stack([np.load(folder / items.cases[items.case_of_item[g]] / f"feat{level}_scale.npy")
                           [items.local_index[g]] for g in picks])[:, :, None, None]
        r, o = r.numpy(), o.float().numpy()
        err = np.abs(r - o)
        assert (err <= scales * (0.5 + 1e-4) + 1e-6).all(), (level, float((err / scales).max()))
        levels = r / scales
        np.testing.assert_allclose(levels, np.rint(levels), atol=1e-3)  # int8 levels times the scale
        assert np.abs(np.rint(levels)).max() == 127
