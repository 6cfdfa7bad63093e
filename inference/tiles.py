"""Batched tiles: nnU-Net's sliding window with many tiles per network call.

nnU-Net's ``_internal_predict_sliding_window_return_logits`` calls the network once per tile. A SAM
image encoder on a 2D tile is a few small matrix products per block, so at batch 1 most of the call is
per-call overhead on a CPU and idle streams on a GPU. :func:`sliding_window_batched` keeps nnU-Net's
semantics (its slicers, Gaussian weighting, padding by the caller, mirroring through
``_internal_maybe_mirror_and_predict``, half-precision sums in tile order) and only gathers up to
``tiles_per_call`` tiles per call.

How many: a memory cap from the device (:func:`memory_cap`) over one tile's working memory
(:func:`tile_working_bytes`: the peak of the live tensors of the plans' image encoder on one tile, followed
on the meta device), at most :func:`per_call_limit` of the device; on a CUDA out-of-memory error the
predictor halves it and tries again. On a CPU the limit is one tile: batching made the encoder slower there
(below).
"""
import weakref
from functools import lru_cache
from typing import Callable, List, Optional, Sequence, Tuple

import psutil
import torch
from nnunetv2.inference.sliding_window_prediction import compute_gaussian
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from tqdm import tqdm

from desam_nnu.config import DeSAMConfig

MAX_TILES_PER_CALL = 32  # on a GPU: a bound on memory and latency (BENCHMARKS, GPU: batch 8 is measured there)
# On a CPU, one tile per call: medsam_lite's encoder at 128 px on the 2-core CPU takes 340 ms a tile one at a time,
# 370 at 2, 462 at 4 and 780 at 32 (benchmarks/results/encoder_batches.json). Its stage 0 works on 256 channels at
# 128x128 per tile, 16 MiB: one tile's maps stay in the caches, a batch's go to memory and wait on it.
CPU_TILES_PER_CALL = 1
# Grid mode on a CPU: PRIM over all 81 prompts of the 9 x 9 grid at once, larger grids 81 at a time (each prompt holds
# its own image side, [prompts, tokens, 256] float32: 1 MiB a prompt at medsam_lite's 1024 neck tokens). With glibc's
# malloc keeping freed memory (desam_nnu/allocator.py, the predictor's CPU default) the grid call takes 0.38 s a tile
# at 81, 0.43 at 27, 0.49 at 9 (medsam_lite, 128 px, 2 cores; tiny and vit_b at 256 px alike; prim_attention.py).
# Under glibc's own settings 27 was fastest (0.82 s against 1.03 at 81): 81 prompts' 85 MB tensors exceed its 32 MiB
# mmap ceiling, so each was page-faulted anew.
CPU_GRID_PROMPTS_PER_CALL = 81
CPU_SHARE = 0.25  # of the memory available when prediction starts: preprocessing and export workers need the rest
CUDA_SHARE = 0.5  # of the GPU memory free when prediction starts


class _PeakBytes(TorchDispatchMode):
    """The peak of live bytes of the tensors made by the ops inside (views and in-place results excluded):
    each output is counted when made and uncounted when Python frees it, as an allocator would see it."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0

    def _free(self, n: int) -> None:
        self.live -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.is_view:
            return out
        inputs = {id(a) for a in tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and id(t) not in inputs:
                n = t.numel() * t.element_size()
                self.live += n
                self.peak = max(self.peak, self.live)
                weakref.finalize(t, self._free, n)
        return out


@lru_cache(maxsize=8)
def tile_working_bytes(cfg: DeSAMConfig) -> int:
    """The bytes one tile costs in a call: the peak of the plans' image encoder on one float32 tile (a 3D
    family's whole network on one 3D tile), run on the meta device (nothing allocated, no weights). ViT-B at
    1024 px: 2.4 GiB (the cache build on an H200 peaked at 12 GiB for 8 such tiles in fp16, weights included:
    BENCHMARKS, GPU). The decoders are small
    beside it and grid mode decodes tile by tile, so they do not grow with the batch."""
    with torch.device("meta"):
        if cfg.slices_per_patch:  # a 3D tile: the whole network on it (every slice of it is encoded)
            network = cfg.build_network()
            image = torch.empty(1, cfg.num_input_channels, cfg.slices_per_patch, *cfg.patch_size)
        else:
            network = cfg.build_network().image_encoder
            image = torch.empty(1, 3, cfg.image_size, cfg.image_size)
        with torch.no_grad(), _PeakBytes() as counted:
            network(image)
    return max(int(counted.peak), 1)


def memory_cap(device: torch.device) -> int:
    """Bytes the tiles of one call may take on ``device``: a share of what is free when prediction starts."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * CUDA_SHARE)
    return int(psutil.virtual_memory().available * CPU_SHARE)


def per_call_limit(device: torch.device) -> int:
    """The most tiles one call takes on ``device``, whatever memory is free."""
    return CPU_TILES_PER_CALL if device.type == "cpu" else MAX_TILES_PER_CALL


def grid_prompts_per_call(device: torch.device) -> Optional[int]:
    """Grid prompts PRIM takes at a time on ``device`` (None: all of them, on a GPU)."""
    return CPU_GRID_PROMPTS_PER_CALL if device.type == "cpu" else None


def bf16_encoder_dtype(device: torch.device) -> torch.dtype:
    """torch.bfloat16 for ``desam_predict --bf16`` on ``device``; a ValueError where it would not pay.

    On a CPU with bf16 arithmetic (avx512_bf16 or AMX) medsam_lite's encoder at 128 px took 82 ms a tile against
    200 ms in float32 (BENCHMARKS, encoder levers); without it, emulated, 20 times longer. On a GPU nnU-Net's
    predictor already runs the network under float16 autocast."""
    if device.type != "cpu":
        raise ValueError(f"--bf16 is for CPUs: on {device.type} nnU-Net's predictor already runs under float16 "
                         f"autocast")
    if not (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()):
        raise ValueError("--bf16: this CPU has no bf16 arithmetic (avx512_bf16 or AMX); emulated, the encoder "
                         "would be about 20 times slower")
    return torch.bfloat16


def tiles_per_call(bytes_per_tile: int, cap_bytes: int, limit: int = MAX_TILES_PER_CALL) -> int:
    """As many tiles as fit under ``cap_bytes``, at least one, at most ``limit``."""
    return max(1, min(limit, cap_bytes // max(bytes_per_tile, 1)))


def sliding_window_batched(data: torch.Tensor, slicers: Sequence[Tuple], per_call: int, num_heads: int,
                           patch_size: Sequence[int], predict: Callable[[torch.Tensor], torch.Tensor],
                           device: torch.device, results_device: torch.device, use_gaussian: bool = True,
                           allow_tqdm: bool = True,
                           before_call: Optional[Callable[[List[Tuple]], None]] = None) -> torch.Tensor:
    """nnU-Net's sliding-window sum over ``slicers`` of ``data`` [C, *spatial] (already padded), calling
    ``predict`` (tiles [B, C, *patch] -> logits [B, num_heads, *patch], mirroring included) on up to
    ``per_call`` tiles at a time. Returns the Gaussian-weighted mean [num_heads, *spatial] in half
    precision on ``results_device``, summed tile by tile in slicer order as nnU-Net sums. ``before_call`` gets
    each call's slicers first (a tile network whose prompts depend on where the tile lies)."""
    data = data.to(results_device)
    logits = torch.zeros((num_heads, *data.shape[1:]), dtype=torch.half, device=results_device)
    weights = torch.zeros(data.shape[1:], dtype=torch.half, device=results_device)
    gaussian = compute_gaussian(tuple(patch_size), sigma_scale=1. / 8, value_scaling_factor=10,
                                device=results_device) if use_gaussian else 1
    with tqdm(total=len(slicers), disable=not allow_tqdm) as bar:
        for start in range(0, len(slicers), per_call):
            chunk: List[Tuple] = list(slicers[start:start + per_call])
            tiles = torch.stack([data[s] for s in chunk]).to(device)  # [B, C, *patch]
            if before_call is not None:
                before_call(chunk)
            predicted = predict(tiles).to(results_device)  # [B, num_heads, *patch]
            for s, prediction in zip(chunk, predicted):
                if use_gaussian:
                    prediction *= gaussian
                logits[s] += prediction
                weights[s[1:]] += gaussian
            bar.update(len(chunk))
    torch.div(logits, weights, out=logits)
    if torch.isinf(logits).any():
        raise RuntimeError("inf in the predicted logits: the half-precision sum overflowed")
    return logits
