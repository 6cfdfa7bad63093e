"""Embedding cache: storage dtypes, atomic and resumable builds, corruption, disk space, concurrent readers."""
import errno
import hashlib
import json
import os
import subprocess
import sys
import threading
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import desam_nnu.cache as cache_mod
from desam_nnu.cache import (CACHE_DTYPES, CacheCorruptError, EmbeddingCache, cache_key, feature_bytes_per_item,
                             file_sha256)
from desam_nnu.errors import DeSAMInputError

KEY = {"data_identifier": "nnUNetPlans_2d", "backbone": "vit_b", "image_size": 256,
       "checkpoint_sha256": "ab" * 32, "patch_size": [256, 256], "tile_layout": 1}
SHAPES = [(8, 4, 4), (3, 2, 2)]  # two encoder outputs, [C, H, W]


def make_case(n=3, seed=0, value=None):
    """Features (float32, one array per encoder output) and extras for a case of ``n`` items."""
    rng = np.random.default_rng(seed)
    if value is None:
        feats = [rng.standard_normal((n, *s)).astype(np.float32) for s in SHAPES]
    else:
        feats = [np.full((n, *s), value, np.float32) for s in SHAPES]
    extras = {"seg": rng.integers(-1, 3, (n, 5, 5)).astype(np.int8),
              "index": np.arange(n * 3, dtype=np.int32).reshape(n, 3)}
    return feats, extras


def dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def case_dirs(cache):
    return sorted(d for d in os.listdir(cache.folder) if os.path.isdir(os.path.join(cache.folder, d)))


@pytest.mark.parametrize("dtype,rtol", [("float32", 0), ("float16", 1e-3)])
def test_float_round_trip_and_extras_exact(tmp_path, dtype, rtol):
    cache = EmbeddingCache(str(tmp_path), KEY, dtype)
    feats, extras = make_case(n=4)
    cache.write_case("case_0", feats, extras)
    case = cache.read("case_0")
    assert case.num_items == 4
    got = case.features([0, 1, 2, 3])
    for g, f in zip(got, feats):
        assert g.dtype == torch.float32 and tuple(g.shape) == f.shape
        torch.testing.assert_close(g, torch.from_numpy(f), rtol=rtol, atol=1e-6 if rtol else 0)
    # a subset, in any order, reads just those items
    sub = case.features(np.array([3, 1]))
    for g, f in zip(sub, feats):
        torch.testing.assert_close(g, torch.from_numpy(f[[3, 1]]), rtol=rtol, atol=1e-6 if rtol else 0)
    for name, arr in extras.items():
        assert case.extras[name].dtype == arr.dtype
        np.testing.assert_array_equal(case.extras[name], arr)


def test_int8_per_channel_quantisation(tmp_path):
    rng = np.random.default_rng(1)
    n, c, h, w = 3, 6, 8, 8
    magnitudes = np.array([1e-3, 1e-1, 1.0, 10.0, 300.0, 0.0], np.float32)  # very different channels, one all zero
    x = (rng.standard_normal((n, c, h, w)) * magnitudes[None, :, None, None]).astype(np.float32)
    cache = EmbeddingCache(str(tmp_path), KEY, "int8")
    cache.write_case("c", [x], {"index": np.zeros((n, 3), np.int32)})
    case = cache.read("c")
    got = case.features(range(n))[0].numpy()

    scale = np.abs(x).max(axis=(2, 3)) / 127
    err = np.abs(got - x)
    assert np.all(err <= scale[:, :, None, None] / 2 * (1 + 1e-5) + 1e-12)
    assert np.all(got[:, 5] == 0)  # the zero channel stays exactly zero
    rel = np.linalg.norm((got - x)[:, :5], axis=(2, 3)) / np.linalg.norm(x[:, :5], axis=(2, 3))
    assert rel.max() < 0.02  # per channel: the 1e-3 channel is as precise as the 300 one
    # one global scale would have wiped out the small channels: that is why it is per channel
    global_scale = np.abs(x).max() / 127
    assert np.all(np.rint(x[:, 0] / global_scale) == 0)

    feat = os.path.getsize(os.path.join(cache.folder, "c", "feat0.npy"))
    scales = os.path.getsize(os.path.join(cache.folder, "c", "feat0_scale.npy"))
    header = 128
    assert feat - header == x.nbytes // 4
    assert scales - header == n * c * 4


def test_bytes_per_item_by_dtype(tmp_path):
    feats, extras = make_case(n=50)
    extra_bytes = 5 * 5 * 1 + 3 * 4
    elems = sum(c * h * w for c, h, w in SHAPES)
    channels = sum(c for c, _, _ in SHAPES)
    expected = {"float32": elems * 4, "float16": elems * 2, "int8": elems + channels * 4}
    on_disk = {}
    for dtype in CACHE_DTYPES:
        cache = EmbeddingCache(str(tmp_path), KEY, dtype)
        cache.write_case("c", feats, extras)
        case = cache.read("c")
        assert case.bytes_per_item(extras=False) == expected[dtype] == feature_bytes_per_item(SHAPES, dtype)
        assert case.bytes_per_item() == expected[dtype] + extra_bytes
        on_disk[dtype] = cache.bytes_on_disk()
    assert on_disk["int8"] < on_disk["float16"] < on_disk["float32"]


def test_read_is_lazy_memmap(tmp_path):
    for dtype in CACHE_DTYPES:
        cache = EmbeddingCache(str(tmp_path), KEY, dtype)
        cache.write_case("c", *make_case())
        case = cache.read("c")
        assert all(isinstance(a, np.memmap) for a in case.extras.values())
        assert all(isinstance(a, np.memmap) for a in case._features)
        assert all(isinstance(s, np.memmap) for s in case._scales if s is not None)
        got = case.features([1])[0]
        got.add_(100)  # a writable copy of just that row: the cache on disk is untouched
        assert torch.all(cache.read("c").features([1])[0] < 50)


def test_bad_inputs(tmp_path):
    with pytest.raises(DeSAMInputError, match="bfloat16"):
        EmbeddingCache(str(tmp_path), KEY, "bfloat16")
    cache = EmbeddingCache(str(tmp_path), KEY)
    feats, extras = make_case(n=2)
    with pytest.raises(ValueError, match="0 items"):
        cache.write_case("c", [f[:0] for f in feats], {k: v[:0] for k, v in extras.items()})
    with pytest.raises(ValueError, match="first dim 2"):
        cache.write_case("c", feats, {"seg": extras["seg"][:1]})
    with pytest.raises(ValueError, match="2 and 1 items"):
        cache.write_case("c", [feats[0], feats[1][:1]], {})
    with pytest.raises(ValueError, match="float16"):
        cache.write_case("c", [feats[0] * 1e6], {})
    with pytest.raises(ValueError, match="invalid case name"):
        cache.write_case("c.tmp123_deadbeef", feats, extras)
    assert cache.cases() == [] and not os.path.exists(cache.folder)  # bad input writes nothing


def test_key_and_cache_json(tmp_path):
    a = EmbeddingCache(str(tmp_path), KEY)
    assert EmbeddingCache(str(tmp_path), dict(reversed(list(KEY.items())))).folder == a.folder
    assert EmbeddingCache(str(tmp_path), {**KEY, "patch_size": (256, 256)}).folder == a.folder
    assert EmbeddingCache(str(tmp_path), KEY, "int8").folder != a.folder
    assert EmbeddingCache(str(tmp_path), {**KEY, "checkpoint_sha256": "cd" * 32}).folder != a.folder
    assert EmbeddingCache(str(tmp_path), {**KEY, "image_size": 512}).folder != a.folder
    assert os.path.dirname(a.folder) == str(tmp_path) and len(cache_key(**KEY)) == 16
    assert os.path.basename(a.folder) == cache_key(**KEY, dtype="float16")

    a.write_case("c", *make_case())
    recorded = json.loads((tmp_path / os.path.basename(a.folder) / "cache.json").read_text())
    assert recorded["fields"] == KEY and recorded["dtype"] == "float16" and recorded["format_version"] == 1
    assert EmbeddingCache(str(tmp_path), KEY).cases() == ["c"]  # reopening checks cache.json and agrees

    ckpt = tmp_path / "ckpt.pth"
    ckpt.write_bytes(os.urandom(3 * 2**20 + 7))
    assert file_sha256(str(ckpt)) == hashlib.sha256(ckpt.read_bytes()).hexdigest()


def test_resumable_build(tmp_path):
    cache = EmbeddingCache(str(tmp_path), KEY)
    names = [f"case_{i}" for i in range(4)]
    calls = []

    def failing(case):
        calls.append(case)
        if case == "case_2":
            raise RuntimeError("encoder crashed")
        return make_case(seed=int(case[-1]))

    with pytest.raises(RuntimeError, match="encoder crashed"):
        cache.build(names, failing, estimated_bytes=1000)
    assert cache.cases() == ["case_0", "case_1"] and cache.has("case_1") and not cache.has("case_2")
    assert case_dirs(cache) == ["case_0", "case_1"]  # no visible (or temporary) dir for the failed one

    calls.clear()
    assert cache.build(names, lambda c: (calls.append(c), make_case(seed=int(c[-1])))[1], 1000) == 2
    assert calls == ["case_2", "case_3"]
    assert cache.cases() == names
    np.testing.assert_allclose(cache.read("case_3").features([0])[0].numpy(), make_case(seed=3)[0][0][:1],
                               rtol=1e-3, atol=1e-6)
    assert cache.build(names, failing, 1000) == 0  # all there: no encoder call at all


def test_stale_tmp_dirs(tmp_path):
    cache = EmbeddingCache(str(tmp_path), KEY)
    cache.write_case("done", *make_case())
    stale = os.path.join(cache.folder, f"case_1.tmp{dead_pid()}_0123abcd")
    live = os.path.join(cache.folder, f"case_2.tmp{os.getpid()}_89abcdef")
    for d in (stale, live):
        os.mkdir(d)
        np.save(os.path.join(d, "feat0.npy"), np.zeros((1, 2, 2, 2), np.float16))
        with open(os.path.join(d, "meta.json"), "w") as f:  # even with its marker, a tmp dir is never a case
            f.write("{}")
    assert cache.cases() == ["done"]
    assert cache.build(["done"], lambda c: pytest.fail("nothing to build"), 1000) == 0
    assert os.path.isdir(stale)  # another part's case: its builder's process id may be another machine's
    assert cache.remove_stale_tmp(["case_1", "case_2"]) == 1  # the dead builder's leftovers, not the live one's
    assert not os.path.exists(stale) and os.path.isdir(live)
    assert cache.cases() == ["done"]


def test_half_written_case_is_never_read(tmp_path, monkeypatch):
    cache = EmbeddingCache(str(tmp_path), KEY)

    def killed_before_rename(src, dst):
        raise KeyboardInterrupt  # the build dies between writing and publishing

    cache.write_case("other", *make_case())
    with monkeypatch.context() as m:
        m.setattr(os, "rename", killed_before_rename)
        with pytest.raises(KeyboardInterrupt):
            cache.write_case("c", *make_case())
    # simulate a kill -9 at that point: the tmp dir is left behind, complete but unpublished
    tmp = os.path.join(cache.folder, f"c.tmp{dead_pid()}_00000000")
    os.mkdir(tmp)
    np.save(os.path.join(tmp, "feat0.npy"), make_case()[0][0].astype(np.float16))
    assert not cache.has("c") and cache.cases() == ["other"]
    with pytest.raises(CacheCorruptError, match="case c is not"):
        cache.read("c")


def test_truncated_file_is_corrupt_then_rebuilt(tmp_path):
    cache = EmbeddingCache(str(tmp_path), KEY)
    cache.build(["a", "b"], lambda c: make_case(seed=ord(c)), 1000)
    path = os.path.join(cache.folder, "a", "feat1.npy")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(CacheCorruptError, match=r"a/feat1\.npy is missing or truncated"):
        cache.read("a")
    with open(os.path.join(cache.folder, "b", "extra_seg.npy"), "wb") as f:
        f.write(b"garbage")
    with pytest.raises(CacheCorruptError, match=r"b/extra_seg\.npy"):
        cache.read("b")

    cache.invalidate("a")
    assert not cache.has("a") and cache.cases() == ["b"]
    calls = []
    assert cache.build(["a", "b"], lambda c: (calls.append(c), make_case(seed=ord(c)))[1], 1000) == 1
    assert calls == ["a"]
    np.testing.assert_allclose(cache.read("a").features([2])[1].numpy(), make_case(seed=ord("a"))[0][1][2:],
                               rtol=1e-3, atol=1e-6)


def test_disk_check_before_building(tmp_path, monkeypatch):
    cache = EmbeddingCache(str(tmp_path), KEY)
    cache.write_case("a", *make_case())
    seen = []

    def tiny_disk(path):
        seen.append(path)
        return SimpleNamespace(total=10 * 2**30, used=9 * 2**30, free=2**30)  # 1 GiB free

    monkeypatch.setattr(cache_mod.shutil, "disk_usage", tiny_disk)
    names = ["a", "b", "c", "d"]
    # 4 cases would take 8 GiB; 3 are missing -> 6 GiB needed, 1 GiB free
    with pytest.raises(DeSAMInputError, match=r"need about 6\.00 GiB.*only 1\.00 GiB is free.*--cache-dtype int8"):
        cache.build(names, lambda c: pytest.fail("must not encode before the disk check"), 8 * 2**30)
    assert seen == [cache.folder]
    assert cache.cases() == ["a"] and case_dirs(cache) == ["a"]
    # the margin counts: 0.9 GiB fits in 1 GiB free only without the 10% + 256 MiB margin
    with pytest.raises(DeSAMInputError, match="not enough disk space"):
        cache.build(names, lambda c: pytest.fail("no"), int(1.2 * 2**30))
    assert cache.build(names, lambda c: make_case(), 4 * 2**20) == 3


def test_disk_full_during_write(tmp_path, monkeypatch):
    cache = EmbeddingCache(str(tmp_path), KEY, "int8")
    cache.write_case("a", *make_case())
    real_save = np.save
    count = {"n": 0}

    def save_then_full(f, arr, **kw):
        count["n"] += 1
        if count["n"] == 3:
            f.write(b"\x93NUMPY partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(f, arr, **kw)

    monkeypatch.setattr(np, "save", save_then_full)
    with pytest.raises(DeSAMInputError, match=r"disk full .* case b in .*" + os.path.basename(cache.folder)):
        cache.build(["a", "b"], lambda c: make_case(), 1000)
    assert case_dirs(cache) == ["a"] and cache.cases() == ["a"] and not cache.has("b")


def test_concurrent_reader_keeps_old_data(tmp_path):
    writer = EmbeddingCache(str(tmp_path), KEY)
    reader = EmbeddingCache(str(tmp_path), KEY)
    writer.write_case("c", *make_case(value=1.0))
    old = reader.read("c")
    writer.invalidate("c")
    assert not reader.has("c")
    feats, extras = make_case(value=2.0)
    writer.write_case("c", feats, {"seg": extras["seg"] + 1, "index": extras["index"]})
    # the open memory maps still see the unlinked files' data
    assert all(torch.all(t == 1.0) for t in old.features([0, 1, 2]))
    np.testing.assert_array_equal(old.extras["seg"], make_case(value=1.0)[1]["seg"])
    assert all(torch.all(t == 2.0) for t in reader.read("c").features([0, 2]))


def test_concurrent_rebuilds_never_show_a_mixed_case(tmp_path):
    """A reader thread only ever sees a whole case (one value everywhere) or none, while a writer rebuilds it."""
    writer = EmbeddingCache(str(tmp_path), KEY)
    reader = EmbeddingCache(str(tmp_path), KEY)
    writer.write_case("c", make_case(value=0.0)[0], {"index": np.zeros((3, 3), np.int32)})
    stop, first_read = threading.Event(), threading.Event()
    seen, errors, reads = set(), [], []

    def read_loop():
        while not stop.is_set():
            try:
                case = reader.read("c")
            except CacheCorruptError as e:
                if "is not (completely)" not in str(e):  # absent between invalidate and rebuild is fine
                    errors.append(e)
                continue
            except Exception as e:  # noqa: BLE001 -- anything else is a torn read
                errors.append(e)
                continue
            reads.append(1)
            first_read.set()
            values = {float(v) for t in case.features([0, 1, 2]) for v in torch.unique(t)}
            values |= {int(v) for v in np.unique(case.extras["index"][:, 0])}
            if len(values) != 1:
                errors.append(AssertionError(f"mixed case {values}"))
            seen.update(values)

    t = threading.Thread(target=read_loop)
    t.start()
    try:
        assert first_read.wait(10)
        for v in range(1, 25):
            feats, extras = make_case(value=float(v))
            writer.invalidate("c")
            writer.write_case("c", feats, {"index": np.full((3, 3), v, np.int32)})
    finally:
        stop.set()
        t.join()
    assert not errors, errors[:3]
    assert len(reads) > 0 and seen <= set(range(25))
    assert sorted(os.listdir(writer.folder)) == ["c", "cache.json"]  # no tmp dir left behind


def test_two_builders_finish_the_same_case(tmp_path, monkeypatch):
    a = EmbeddingCache(str(tmp_path), KEY)
    b = EmbeddingCache(str(tmp_path), KEY)

    def encode_while_b_finishes(case):
        b.write_case(case, *make_case(value=7.0))  # b publishes while a is still encoding
        return make_case(value=8.0)

    monkeypatch.setattr(a, "has", lambda case: False)  # a decided to build before b finished
    assert a.build(["c"], encode_while_b_finishes, 1000) == 1
    assert case_dirs(b) == ["c"]  # a's tmp dir is gone
    assert all(torch.all(t == 7.0) for t in b.read("c").features([0]))  # the first published copy is kept
