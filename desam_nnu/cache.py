"""Frozen-encoder embedding cache: SAM features computed once per training item, reused by every fold and run.

The image encoder is frozen, so its outputs depend only on the preprocessed data, the backbone, the image
size, the checkpoint and the tiling; those fields (plus the storage dtype) name the cache folder. Each case is
one directory of plain ``.npy`` files (memory-mappable, so RAM does not grow with the dataset) that only ever
appears by renaming a finished temporary directory, and is never modified in place. Readers therefore see a
case whole or not at all, and already-open memory maps keep their data when a case is removed or rebuilt.

Storage: float16 (default, half of the official float32 npz files), int8 with one symmetric scale per
(item, channel) (a quarter), or float32.
"""
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import tempfile
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from tqdm import tqdm

from desam_nnu.atomic import pid_alive
from desam_nnu.errors import DeSAMInputError

CACHE_DTYPES = ("float16", "int8", "float32")
CACHE_FORMAT_VERSION = 1
_STORED_DTYPE = {"float16": np.float16, "int8": np.int8, "float32": np.float32}
_FLOAT16_MAX = float(np.finfo(np.float16).max)
_META = "meta.json"
_CACHE_JSON = "cache.json"
# "<case>.tmp<pid>_<8 hex>": a case being written (or being removed) by process <pid>
_TMP_RE = re.compile(r"^(?P<case>.+)\.tmp(?P<pid>\d+)_(?P<rand>[0-9a-f]{8})$")
_EXTRA_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_MARGIN_FRACTION = 0.10
_MARGIN_BYTES = 256 * 2**20


def cache_key(**fields: Any) -> str:
    """First 16 hex digits of the sha256 of the fields as sorted, compact JSON: same fields, same folder."""
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def file_sha256(path: str) -> str:
    """sha256 of a (multi-GiB) checkpoint, streamed in 1 MiB chunks so it never sits in memory."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(2**20), b""):
            h.update(chunk)
    return h.hexdigest()


def feature_bytes_per_item(shapes: Sequence[Sequence[int]], dtype: str = "float16") -> int:
    """Bytes one item's features take on disk for encoder outputs of shapes ``(C, H, W)``; for build's estimate."""
    _check_dtype(dtype)
    itemsize = np.dtype(_STORED_DTYPE[dtype]).itemsize
    total = 0
    for c, h, w in shapes:
        total += int(c) * int(h) * int(w) * itemsize + (int(c) * 4 if dtype == "int8" else 0)
    return total


class CacheCorruptError(DeSAMInputError):
    """A cached case is missing, truncated or unreadable: invalidate it and build again."""


def _check_dtype(dtype: str) -> None:
    if dtype not in CACHE_DTYPES:
        raise DeSAMInputError(f"unknown cache dtype {dtype!r}; choose one of {', '.join(CACHE_DTYPES)}")


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def _save(path: str, arr: np.ndarray) -> None:
    """np.save, then fsync, so a rename never publishes a file whose data is still only in the page cache."""
    with open(path, "wb") as f:
        np.save(f, arr, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _quantise_int8(x: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Per (item, channel) symmetric int8: scale = max|x| / 127 over H, W (1 where all zero); item by item to bound RAM."""
    n, c = x.shape[:2]
    q = np.empty(x.shape, dtype=np.int8)
    scales = np.empty((n, c), dtype=np.float32)
    for i in range(n):
        xi = np.asarray(x[i], dtype=np.float32)
        s = np.abs(xi).max(axis=(1, 2)) / np.float32(127)
        s[s == 0] = 1
        scales[i] = s
        q[i] = np.clip(np.rint(xi / s[:, None, None]), -127, 127)
    return q, scales


class CachedCase:
    """One cached case, memory-mapped: only the items asked for are read from disk."""

    def __init__(self, name: str, dtype: str, features: List[np.ndarray], scales: List[Optional[np.ndarray]],
                 extras: Dict[str, np.ndarray]) -> None:
        self.name = name
        self.dtype = dtype
        self.num_items: int = int(features[0].shape[0])
        self.extras: Dict[str, np.ndarray] = extras
        self._features = features
        self._scales = scales

    def features(self, items: Union[Sequence[int], np.ndarray]) -> List[torch.Tensor]:
        """float32 tensors ``[len(items), C, H, W]``, one per encoder output, dequantised for int8."""
        idx = np.asarray(items, dtype=np.int64).reshape(-1)
        out = []
        for arr, scales in zip(self._features, self._scales):
            x = arr[idx]  # fancy index of a memmap: a copy of just these rows
            if scales is not None:
                x = x.astype(np.float32) * scales[idx][:, :, None, None]
            out.append(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        return out

    def bytes_per_item(self, extras: bool = True) -> int:
        """Bytes one item takes on disk: features (+ int8 scales) and, unless ``extras=False``, the extras."""
        arrays = list(self._features) + [s for s in self._scales if s is not None]
        if extras:
            arrays += list(self.extras.values())
        return int(sum(a.nbytes // max(a.shape[0], 1) for a in arrays))


class EmbeddingCache:
    """A folder of cached cases for one set of key fields and dtype; safe for concurrent readers and builders."""

    def __init__(self, root: str, key_fields: Dict[str, Any], dtype: str = "float16") -> None:
        _check_dtype(dtype)
        if "dtype" in key_fields:
            raise ValueError("key_fields must not contain 'dtype'; pass it as the dtype argument")
        self.root = root
        self.dtype = dtype
        self.key = cache_key(**key_fields, dtype=dtype)
        self.folder: str = os.path.join(root, self.key)
        # what cache.json records; the JSON round trip makes tuples and lists compare equal
        self._description = json.loads(json.dumps(
            {"format_version": CACHE_FORMAT_VERSION, "key": self.key, "dtype": dtype, "fields": key_fields}))
        self._check_cache_json()

    # ---- layout -------------------------------------------------------------------------------------

    def _cache_json(self) -> str:
        return os.path.join(self.folder, _CACHE_JSON)

    def _check_cache_json(self) -> bool:
        """True if cache.json exists and describes this cache; a different one means a different cache."""
        path = self._cache_json()
        try:
            with open(path) as f:
                found = json.load(f)
        except FileNotFoundError:
            return False
        except (OSError, ValueError) as e:
            raise CacheCorruptError(f"{path} is unreadable ({e}); delete {self.folder} to rebuild the cache") from e
        if found != self._description:
            raise CacheCorruptError(
                f"{path} describes a different cache (format {found.get('format_version')!r}, "
                f"dtype {found.get('dtype')!r}); delete {self.folder} to rebuild it")
        return True

    def _ensure_folder(self) -> None:
        os.makedirs(self.folder, exist_ok=True)
        if self._check_cache_json():
            return
        fd, tmp = tempfile.mkstemp(prefix=_CACHE_JSON + ".", suffix=".tmp", dir=self.folder)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self._description, f, indent=4)
            os.replace(tmp, self._cache_json())
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def _case_dir(self, case: str) -> str:
        if (not isinstance(case, str) or case in ("", ".", "..", _CACHE_JSON) or case.startswith(".")
                or os.sep in case or (os.altsep and os.altsep in case) or _TMP_RE.match(case)):
            raise ValueError(f"invalid case name for the embedding cache: {case!r}")
        return os.path.join(self.folder, case)

    def _tmp_dir(self, case: str) -> str:
        return os.path.join(self.folder, f"{case}.tmp{os.getpid()}_{secrets.token_hex(4)}")

    # ---- queries ------------------------------------------------------------------------------------

    def has(self, case: str) -> bool:
        """A complete case is present (case directories only appear whole, by rename)."""
        return os.path.isfile(os.path.join(self._case_dir(case), _META))

    def cases(self) -> List[str]:
        """Complete cases, sorted; temporary directories of unfinished writes are never listed."""
        if not os.path.isdir(self.folder):
            return []
        return sorted(name for name in os.listdir(self.folder)
                      if not _TMP_RE.match(name) and os.path.isfile(os.path.join(self.folder, name, _META)))

    def bytes_on_disk(self) -> int:
        """Size of every file under the cache folder, temporary directories included."""
        total = 0
        for dirpath, _, files in os.walk(self.folder):
            for name in files:
                try:
                    total += os.lstat(os.path.join(dirpath, name)).st_size
                except FileNotFoundError:  # removed by a concurrent invalidate
                    pass
        return total

    # ---- writing ------------------------------------------------------------------------------------

    def write_case(self, case: str, features: List[np.ndarray], extras: Dict[str, np.ndarray]) -> None:
        """Store one case atomically. If another builder already published it, theirs is kept and ours dropped."""
        final = self._case_dir(case)
        n = self._validate(case, features, extras)
        self._ensure_folder()
        tmp = self._tmp_dir(case)
        meta: Dict[str, Any] = {"format_version": CACHE_FORMAT_VERSION, "dtype": self.dtype, "num_items": n,
                                "features": [], "extras": {}}
        try:
            os.mkdir(tmp)
            for i, x in enumerate(features):
                if self.dtype == "int8":
                    q, scales = _quantise_int8(x)
                    _save(os.path.join(tmp, f"feat{i}.npy"), q)
                    del q
                    _save(os.path.join(tmp, f"feat{i}_scale.npy"), scales)
                else:
                    _save(os.path.join(tmp, f"feat{i}.npy"), np.asarray(x).astype(_STORED_DTYPE[self.dtype], copy=False))
                meta["features"].append(list(x.shape[1:]))
            for name, arr in extras.items():
                arr = np.asarray(arr)
                _save(os.path.join(tmp, f"extra_{name}.npy"), arr)
                meta["extras"][name] = {"dtype": arr.dtype.str, "shape": list(arr.shape)}
            with open(os.path.join(tmp, _META), "w") as f:  # last: its presence marks a finished write
                json.dump(meta, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            _fsync_dir(tmp)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if e.errno in _DISK_FULL:
                raise DeSAMInputError(
                    f"disk full while caching encoder features of case {case} in {self.folder} ({e.strerror}); "
                    "free space or use --cache-dtype int8") from e
            raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        try:
            os.rename(tmp, final)  # POSIX: fails if `final` is a non-empty directory
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if not (e.errno in (errno.EEXIST, errno.ENOTEMPTY) and os.path.isfile(os.path.join(final, _META))):
                raise
            return  # another builder finished this case first; readers may already map its files
        _fsync_dir(self.folder)

    def _validate(self, case: str, features: List[np.ndarray], extras: Dict[str, np.ndarray]) -> int:
        if not features:
            raise ValueError(f"case {case}: no encoder outputs to cache")
        n = None
        for i, x in enumerate(features):
            if x.ndim != 4:
                raise ValueError(f"case {case}: encoder output {i} has shape {x.shape}, expected [N, C, H, W]")
            if n is None:
                n = int(x.shape[0])
            if x.shape[0] != n:
                raise ValueError(f"case {case}: encoder outputs have {n} and {x.shape[0]} items")
            if not np.issubdtype(x.dtype, np.floating):
                raise ValueError(f"case {case}: encoder output {i} has dtype {x.dtype}, expected floating point")
            if x.size:
                amax = float(np.max(np.abs(x)))
                if not np.isfinite(amax):
                    raise ValueError(f"case {case}: encoder output {i} is not finite")
                if self.dtype == "float16" and amax > _FLOAT16_MAX:
                    raise ValueError(f"case {case}: encoder output {i} reaches {amax:g}, beyond float16; "
                                     "use --cache-dtype float32 or int8")
        if n < 1:
            raise ValueError(f"case {case}: nothing to cache (0 items)")
        for name, arr in extras.items():
            if not _EXTRA_NAME_RE.match(name):
                raise ValueError(f"case {case}: invalid extras name {name!r}")
            arr = np.asarray(arr)
            if arr.dtype.hasobject:
                raise ValueError(f"case {case}: extras {name!r} is an object array")
            if arr.ndim < 1 or arr.shape[0] != n:
                raise ValueError(f"case {case}: extras {name!r} has shape {arr.shape}, expected first dim {n}")
        return n

    def invalidate(self, case: str) -> None:
        """Remove a case (e.g. a corrupt one) so build makes it again; it vanishes at once, by rename."""
        final = self._case_dir(case)
        doomed = self._tmp_dir(case)
        try:
            os.rename(final, doomed)
        except FileNotFoundError:
            return
        shutil.rmtree(doomed, ignore_errors=True)

    def remove_stale_tmp(self, cases: Optional[Sequence[str]] = None) -> int:
        """Delete temporary directories left by dead processes (killed builds), of ``cases`` only when given;
        returns how many. A builder cleans only its own cases' leftovers: builders of other parts may run on
        other machines sharing the folder, where a process id of theirs means nothing here."""
        if not os.path.isdir(self.folder):
            return 0
        own = None if cases is None else set(cases)
        removed = 0
        for name in os.listdir(self.folder):
            m = _TMP_RE.match(name)
            path = os.path.join(self.folder, name)
            if own is not None and (not m or m.group("case") not in own):
                continue
            if m and os.path.isdir(path) and not pid_alive(int(m.group("pid"))):
                shutil.rmtree(path, ignore_errors=True)
                removed += 1
        return removed

    def build(self, cases: List[str], encode_case: Callable[[str], Tuple[List[np.ndarray], Dict[str, np.ndarray]]],
              estimated_bytes: int, desc: str = "Caching encoder features") -> int:
        """Encode and store the cases not yet cached (resumable); returns how many were built.

        ``estimated_bytes`` is the size of the whole cache for ``cases``; it is checked, scaled to the missing
        fraction, against the free space before anything is encoded, so a long build does not die at 95%.
        """
        self._ensure_folder()
        unique = list(dict.fromkeys(cases))
        self.remove_stale_tmp(unique)
        missing = [c for c in unique if not self.has(c)]
        if not missing:
            return 0
        needed = int(estimated_bytes * len(missing) / len(unique))
        required = int(needed * (1 + _MARGIN_FRACTION)) + _MARGIN_BYTES
        free = shutil.disk_usage(self.folder).free
        if required > free:
            hint = ("use --cache-dtype int8 (4x smaller than float32) or free space" if self.dtype != "int8"
                    else "free space or put the cache on a larger disk")
            raise DeSAMInputError(
                f"not enough disk space for the encoder feature cache in {self.folder}: {len(missing)} cases need "
                f"about {_gib(needed)} (with margin {_gib(required)}) but only {_gib(free)} is free; {hint}")
        built = 0
        for case in tqdm(missing, desc=desc, unit="case"):
            if self.has(case):  # a concurrent builder got there first
                continue
            features, extras = encode_case(case)
            self.write_case(case, features, extras)
            built += 1
        return built

    # ---- reading ------------------------------------------------------------------------------------

    def read(self, case: str) -> CachedCase:
        """Memory-map a complete case; a missing, truncated or unparsable file is a CacheCorruptError.

        The result is one consistent version of the case even while another process invalidates and rebuilds
        it: the case directory is pinned by a descriptor, and the read is retried if the name stopped pointing
        at it (a replaced directory never comes back, so "same at the end" means "same throughout").
        """
        folder = self._case_dir(case)
        for _ in range(5):
            try:
                dfd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            except (FileNotFoundError, NotADirectoryError) as e:
                raise CacheCorruptError(f"case {case} is not (completely) in the embedding cache {self.folder}") from e
            try:
                pinned = os.fstat(dfd)
                result: Optional[CachedCase] = None
                error: Optional[CacheCorruptError] = None
                try:
                    result = self._load(case, folder)
                except CacheCorruptError as e:
                    error = e
                try:
                    unchanged = os.path.samestat(pinned, os.stat(folder))
                except FileNotFoundError:
                    unchanged = False
                if unchanged:
                    if error is not None:
                        raise error
                    assert result is not None
                    return result
            finally:
                os.close(dfd)
        raise CacheCorruptError(f"case {case} in {self.folder} kept being replaced while it was read")

    def _load(self, case: str, folder: str) -> CachedCase:
        meta_path = os.path.join(folder, _META)
        try:
            with open(meta_path) as f:
                meta = json.load(f)
            n = int(meta["num_items"])
            feature_shapes = [tuple(int(d) for d in s) for s in meta["features"]]
            extra_specs = {k: (tuple(v["shape"]), np.dtype(v["dtype"])) for k, v in meta["extras"].items()}
            stored = meta["dtype"]
            if n < 1 or not feature_shapes or any(len(s) != 3 for s in feature_shapes):
                raise ValueError("no items or no encoder outputs")
        except FileNotFoundError as e:
            raise CacheCorruptError(f"case {case} is not (completely) in the embedding cache {self.folder}") from e
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CacheCorruptError(f"{meta_path} is unreadable ({e}); invalidate case {case}") from e
        if stored != self.dtype:
            raise CacheCorruptError(f"{meta_path} says dtype {stored}, this cache is {self.dtype}")

        def load(name: str, shape: Tuple[int, ...], dtype: Any) -> np.ndarray:
            path = os.path.join(folder, name)
            try:
                arr = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError, EOFError) as e:
                raise CacheCorruptError(f"{path} is missing or truncated ({e}); invalidate case {case}") from e
            if arr.shape != tuple(shape) or arr.dtype != np.dtype(dtype):
                raise CacheCorruptError(f"{path} holds {arr.dtype}{list(arr.shape)}, expected "
                                        f"{np.dtype(dtype)}{list(shape)}; invalidate case {case}")
            return arr

        features, scales = [], []
        for i, chw in enumerate(feature_shapes):
            features.append(load(f"feat{i}.npy", (n, *chw), _STORED_DTYPE[self.dtype]))
            scales.append(load(f"feat{i}_scale.npy", (n, chw[0]), np.float32) if self.dtype == "int8" else None)
        extras = {name: load(f"extra_{name}.npy", shape, dtype) for name, (shape, dtype) in extra_specs.items()}
        return CachedCase(case, self.dtype, features, scales, extras)
