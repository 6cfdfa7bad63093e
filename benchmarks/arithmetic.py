"""What prediction's parts cost in arithmetic, and what this CPU delivers: the floor under #22's speed goals.

Floating-point operations are counted by torch's own ``FlopCounterMode`` (2 per multiply-add of every
matmul, convolution and attention, fused attention on a CPU included; elementwise work is not counted),
per part of DeSAM's tile network (encoder, PRIM, PDMM: the same parts ``predict.py`` times) and per
forward of nnU-Net's 2D U-Net. The machine's ceiling is a large float32 matmul at the same thread
count. The counted work divided by the measured seconds is each part's achieved GFLOP/s; divided by the
ceiling, it is the least time any implementation of the same arithmetic could take here.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, Sequence

MATMUL_SIZE = 1024


def matmul_gflops(size: int = MATMUL_SIZE, rounds: int = 5) -> float:
    """Best-of-``rounds`` float32 GFLOP/s of one ``size`` x ``size`` matmul at torch's current threads."""
    import torch
    a, b = torch.rand(size, size), torch.rand(size, size)
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best / 1e9


def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def flop_counter():
    """torch's ``FlopCounterMode``, also counting fused attention on a CPU: torch 2.14 has formulas for the CUDA
    kernels only, and counts ``scaled_dot_product_attention``'s CPU kernel as nothing."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    cpu_attention = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    return FlopCounterMode(display=False, custom_mapping={cpu_attention: _cpu_attention_flops})


class PartFlops:
    """FLOPs per named part while one ``FlopCounterMode`` runs: each part's method is wrapped (see
    :meth:`wrap`) and charged the counter's growth during its calls; parts must not nest."""

    def __init__(self) -> None:
        self.flops: Dict[str, int] = {}
        self._counter = None

    def wrap(self, name: str, fn: Callable) -> Callable:
        def counted(*args, **kwargs):
            if self._counter is None:
                return fn(*args, **kwargs)
            before = self._counter.get_total_flops()
            try:
                return fn(*args, **kwargs)
            finally:
                self.flops[name] = self.flops.get(name, 0) + self._counter.get_total_flops() - before
        return counted

    @contextmanager
    def counting(self) -> Iterator[Dict[str, int]]:
        """Count the parts of what runs inside; yields the part -> FLOPs dict (filled on exit), with
        ``"total"`` for everything counted, inside a part or not."""
        self.flops = {}
        out: Dict[str, int] = {}
        with flop_counter() as counter:
            self._counter = counter
            try:
                yield out
            finally:
                self._counter = None
        out.update(self.flops, total=counter.get_total_flops())


def nnunet_arithmetic(model_folder: str, images: Sequence[str], rounds: int = 5) -> dict:
    """nnU-Net's 2D U-Net of ``model_folder`` (fold 0) on ``images``: GFLOP and best-of-``rounds`` seconds per
    forward of one patch (batch 1, as its sliding window calls it), and forwards per volume as its own
    preprocessing and sliding-window steps give them (x 2^axes with the checkpoint's mirroring axes)."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

    predictor = nnUNetPredictor(tile_step_size=0.5, use_mirroring=False, device=torch.device("cpu"),
                                allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(model_folder, (0,), "checkpoint_final.pth")
    network, patch = predictor.network.eval(), tuple(predictor.configuration_manager.patch_size)
    preprocessor = predictor.configuration_manager.preprocessor_class(verbose=False)
    forwards: List[int] = []
    for image in images:
        data, _, _ = preprocessor.run_case([image], None, predictor.plans_manager, predictor.configuration_manager,
                                           predictor.dataset_json)
        padded = [max(s, p) for s, p in zip(data.shape[2:], patch)]  # nnU-Net pads a slice up to the patch
        steps = compute_steps_for_sliding_window(padded, patch, 0.5)
        forwards.append(data.shape[1] * len(steps[0]) * len(steps[1]))
    x = torch.rand(1, network_input_channels(predictor), *patch)
    with torch.inference_mode():
        with flop_counter() as counter:
            network(x)
        best = float("inf")
        for _ in range(rounds + 1):  # the first is a warm-up
            start = time.perf_counter()
            network(x)
            best = min(best, time.perf_counter() - start)
    return {"patch_size": list(patch), "gflop_per_forward": counter.get_total_flops() / 1e9,
            "s_per_forward": best, "forwards_per_volume": sum(forwards) / len(forwards),
            "mirrorings": 2 ** len(predictor.allowed_mirroring_axes or ()), "threads": torch.get_num_threads()}


def network_input_channels(predictor) -> int:
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    return determine_num_input_channels(predictor.plans_manager, predictor.configuration_manager,
                                        predictor.dataset_json)
