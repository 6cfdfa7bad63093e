"""benchmarks/arithmetic.py counts what prediction's parts compute, and its report says what the CPU's ceiling
allows (#22's floor)."""
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from arithmetic import PartFlops, matmul_gflops  # noqa: E402
from report_predict import _arithmetic  # noqa: E402


def test_each_part_is_charged_its_own_multiply_adds_and_the_total_everything():
    torch.manual_seed(0)
    encoder, head = nn.Linear(64, 32), nn.Linear(32, 8)
    flops = PartFlops()
    encoder.forward = flops.wrap("encoder", encoder.forward)
    x = torch.rand(10, 64)
    with flops.counting() as counted:
        y = encoder(x)
        encoder(x)  # a second call adds to the part
        head(y)  # outside every part: the total only
    assert counted["encoder"] == 2 * (2 * 10 * 64 * 32)
    assert counted["total"] == counted["encoder"] + 2 * 10 * 32 * 8
    assert "head" not in counted
    encoder(x)  # outside counting the wrapped method still runs, uncounted
    assert flops.flops == {"encoder": 2 * 2 * 10 * 64 * 32}


def test_fused_attention_on_a_cpu_is_counted():
    """torch's counter has no formula for the CPU kernel of scaled_dot_product_attention; ours adds it."""
    q, k = torch.rand(1, 8, 100, 32), torch.rand(1, 8, 200, 32)
    with torch.no_grad(), PartFlops().counting() as counted:
        torch.nn.functional.scaled_dot_product_attention(q, k, k)
    assert counted["total"] == 2 * (2 * 8 * 100 * 200 * 32)  # q @ k^T, then the weights @ v


def test_the_matmul_ceiling_is_a_rate():
    assert 0.1 < matmul_gflops(size=128, rounds=2) < 1e5


def _run(peak: float) -> dict:
    """A predict.py run of medsam_lite with counted FLOPs: 36 tiles, box 21.1 GFLOP a tile (20 in the encoder),
    nnU-Net 0.5 GFLOP a forward, 36 forwards a volume."""
    counted = {"box": {"encoder": 20.0, "prim": 0.1, "pdmm": 1.0, "total": 21.1},
               "grid": {"encoder": 20.0, "prim": 3.0, "pdmm": 1.0, "total": 24.0}}
    modes = {m: {"tiles_per_volume": 36.0, "parts_s_per_volume": {"encoder": 14.4, "prim": 0.5, "pdmm": 4.0}}
             for m in counted}
    return {"models": {"nnunet": {"arithmetic": {"patch_size": [56, 40], "gflop_per_forward": 0.5,
                                                 "s_per_forward": 0.01, "forwards_per_volume": 36.0,
                                                 "mirrorings": 4}}},
            "one": {"medsam_lite": {"threads": 2, "modes": modes,
                                    "arithmetic": {"gflop_per_tile": counted, "matmul_size": 1024,
                                                   "matmul_gflops": peak}}}}


@pytest.mark.parametrize("peak, reach, box_floor", [(100.0, "cannot", "7.6 s"), (1000.0, "can", "0.76 s")])
def test_the_report_gives_each_part_its_rate_and_floor_and_says_whether_the_goal_is_reachable(peak, reach, box_floor):
    text = _arithmetic(_run(peak))[0]
    lines = {tuple(c.strip() for c in ln.strip("|").split(" | ")[:2]): ln for ln in text.splitlines()
             if ln.startswith("| ")}
    encoder = [c.strip() for c in lines[("box", "encoder")].strip("|").split(" | ")]
    assert encoder == ["box", "encoder", "20.00", "720", "14.4 s", "50", f"{720 / peak:.3g} s"]
    mirrored = [c.strip() for c in lines[("nnU-Net 2D", "mirroring")].strip("|").split(" | ")]
    assert mirrored == ["nnU-Net 2D", "mirroring", "0.500", "72.0", "1.44 s", "50", f"{72 / peak:.3g} s"]
    assert "box mode counts 760 GFLOP a volume, 11 times nnU-Net's with mirroring" in text
    assert f"it would take {box_floor} a volume" in text and f"exact {reach} reach it" in text
    assert f"**{peak:.0f} GFLOP/s**" in text
