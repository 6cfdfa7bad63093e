"""desam_predict's speed levers on synthetic NIfTI: many tiles per call, PRIM's prompts per call, the memory cap,
blank tiles, --coarse-grid, --bf16 and the ONNX Runtime encoder, each against the plain prediction."""
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import trained_tiny_model
from synthetic import synthetic_case, write_nifti
from test_predict import SPACING, _predictor, _sure_of_class_one, _write_case

from desam_nnu.cli.predict import main
from desam_nnu.inference import tiles
from desam_nnu.inference.predictor import DeSAMPredictor
from desam_nnu.model import DeSAM


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Dataset007 (tiny backbone, 64 px input), folds 0 and 1 trained a few iterations (as tests/test_predict.py)."""
    yield from trained_tiny_model(tmp_path_factory, 7, 5, (8, 40, 48), (0, 1))


def _preprocessed(p: DeSAMPredictor, image: Path) -> torch.Tensor:
    data, _, _ = p.configuration_manager.preprocessor_class().run_case(
        [str(image)], None, p.plans_manager, p.configuration_manager, p.dataset_json)
    return torch.from_numpy(np.asarray(data))


def _batch_sizes(p: DeSAMPredictor) -> list:
    """The tile counts the network is called with, from here on."""
    sizes: list = []
    p.network.register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[0]))
    return sizes


@pytest.mark.parametrize("mode, mirroring", [("grid", False), ("box", True)])
def test_many_tiles_per_call_predict_as_one_at_a_time(trained, tmp_path, mode, mirroring):
    """Several tiles per slice, 7 per call against 1 per call: equal logits (fp32 rounding, fp16 sums)."""
    image = _write_case(tmp_path / "in", "big", shape_zyx=(1 if mirroring else 2, 80, 96))
    outputs, sizes = [], []
    for per_call in (1, 7):
        p = _predictor(trained, use_mirroring=mirroring, tiles_per_call=per_call,
                       prompt_overrides={"mode": mode, "iou_threshold": 0.0})
        sizes.append(_batch_sizes(p))
        outputs.append(p.predict_logits_from_preprocessed_data(_preprocessed(p, image)).float())
        assert p.tiles_per_call == per_call
    assert set(sizes[0]) == {1} and max(sizes[1]) == 7 and sum(sizes[0]) == sum(sizes[1])
    assert len(sizes[0]) == p.network.tile_calls > 8  # every tile (every flip) went through the network
    assert outputs[0][1:].amax() > 0.1  # not all background: the comparison means something
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=2e-3)


def test_grid_prompts_a_third_at_a_time_on_a_cpu_predict_as_all_at_once(trained, tmp_path, monkeypatch):
    """PRIM over the 81 grid prompts a third at a time (a capped CPU call, inference/tiles.py): the logits of all 81
    at once. A CPU's cap takes the default grid in one call."""
    assert tiles.grid_prompts_per_call(torch.device("cpu")) == 81 and tiles.grid_prompts_per_call(
        torch.device("cuda")) is None
    image = _write_case(tmp_path / "in", "big", shape_zyx=(2, 80, 96))
    seen, original = [], DeSAM.grid_candidates
    monkeypatch.setattr(DeSAM, "grid_candidates",
                        lambda self, *a, **kw: seen.append(kw.get("prompts_per_batch")) or original(self, *a, **kw))
    outputs = []
    for per_call in (27, None):
        monkeypatch.setattr(tiles, "CPU_GRID_PROMPTS_PER_CALL", per_call)
        p = _predictor(trained, use_mirroring=False, prompt_overrides={"mode": "grid", "iou_threshold": 0.0})
        outputs.append(p.predict_logits_from_preprocessed_data(_preprocessed(p, image)).float())
        assert p.network.grid.shape[0] == 81
    assert seen[0] == 27 and seen[-1] is None and len(seen) == 2 * seen.count(27) > 2  # every tile, both ways
    assert outputs[0][1:].amax() > 0.1  # not all background: the comparison means something
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=2e-3)  # fp16 sums, as nnU-Net's


def test_coarse_grid_scores_fewer_prompts_per_tile_and_keeps_their_exact_masks(trained, tmp_path, monkeypatch):
    """--coarse-grid reaches every tile's grid decode; the kept prompts' masks are the exact decode's wherever both
    keep the same prompt, and the option is named in the configuration note."""
    image = _write_case(tmp_path / "in", "big", shape_zyx=(2, 80, 96))
    seen, original = [], DeSAM.grid_candidates
    monkeypatch.setattr(DeSAM, "grid_candidates",
                        lambda self, *a, **kw: seen.append(original(self, *a, **kw)) or seen[-1])
    outputs = []
    for coarse in (None, True):
        p = _predictor(trained, use_mirroring=False,
                       prompt_overrides={"mode": "grid", "iou_threshold": 0.0, "coarse_grid": coarse})
        outputs.append(p.predict_logits_from_preprocessed_data(_preprocessed(p, image)).float())
    assert "coarse_grid=True" in p.configuration_note and p.prompts.coarse_grid and "warning" not in \
        p.configuration_note
    exact, coarse = seen[:len(seen) // 2], seen[len(seen) // 2:]
    assert len(exact) == len(coarse) > 2 and all(c.prompt_iou.isfinite().all() for c in exact)
    assert all(int(c.prompt_iou[:, 0].isfinite().sum()) <= 25 + 8 * c.prompt_iou.shape[1] for c in coarse)
    same = [(e, c) for e, c in zip(exact, coarse) if torch.equal(e.indices, c.indices)]
    assert same  # the coarse search found the exact best prompts on some tiles: there the masks are equal
    for e, c in same:
        torch.testing.assert_close(c.logits, e.logits, atol=1e-4, rtol=0)
    assert outputs[1][1:].amax() > 0.1
    p = _predictor(trained, prompt_overrides={"mode": "grid", "iou_threshold": 0.5, "coarse_grid": True})
    assert "warning: --coarse-grid with --iou-thresh 0.5 misses objects" in p.configuration_note


def test_bf16_puts_the_encoder_alone_in_bfloat16_where_the_cpu_has_it(trained, tmp_path, monkeypatch, capsys):
    """--bf16: the image encoder computes in bfloat16, PRIM and PDMM get float32 features; the output stays close
    to float32's. Refused on a CPU without bf16 arithmetic and on a GPU, in one line and before any output."""
    from desam_nnu.inference.tiles import bf16_encoder_dtype
    image = _write_case(tmp_path / "in", "big", shape_zyx=(1, 80, 96))
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)  # whatever CPU runs this test
    outputs = []
    for bf16 in (False, True):
        p = _predictor(trained, use_mirroring=False, bf16=bf16, onnx=False, prompt_overrides={"mode": "box"})
        encoded, decoded = [], []
        for m in p.network.desam.image_encoder.modules():  # what its matrix products compute in
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
                m.register_forward_hook(lambda m, a, out: encoded.append(out.dtype))
        p.network.desam.prim.register_forward_pre_hook(lambda m, args: decoded.append(args[0].dtype))
        outputs.append(p.predict_logits_from_preprocessed_data(_preprocessed(p, image)).float())
        assert set(encoded) == {torch.bfloat16 if bf16 else torch.float32} and set(decoded) == {torch.float32}
    assert "image encoder in bfloat16" in p.configuration_note
    assert outputs[0][1:].amax() > 0.1 and not torch.equal(outputs[0], outputs[1])
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=0.05)  # probabilities, bf16's 3 digits
    assert bf16_encoder_dtype(torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="on cuda nnU-Net's predictor already runs under float16"):
        bf16_encoder_dtype(torch.device("cuda"))
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--bf16", "-device", "cpu"]) == 2
    assert "error: --bf16: this CPU has no bf16 arithmetic" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_on_a_cpu_onnx_runtime_encodes_and_the_prediction_stays_pytorchs(trained, tmp_path):
    """The default on a CPU: DeSAM's encoder in ONNX Runtime (folds sharing the frozen encoder, or one fold), the
    same logits as PyTorch's to fp32 rounding; not with --bf16 or onnx=False."""
    from desam_nnu.inference.onnx_encoder import OnnxEncoder
    image = _write_case(tmp_path / "in", "big", shape_zyx=(2, 80, 96))
    outputs = []
    for onnx in (False, True):
        p = _predictor(trained, folds=(0, 1), use_mirroring=True, onnx=onnx, prompt_overrides={"mode": "box"})
        outputs.append(p.predict_logits_from_preprocessed_data(_preprocessed(p, image)).float())
        assert isinstance(p.network.fast_encoder, OnnxEncoder) == onnx and len(p.network.ensemble) == 2
    assert sorted(p.network.fast_encoder.sessions) == [1] and not p.network.fast_encoder.failed
    assert outputs[0][1:].amax() > 0.1
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=2e-3)  # fp16 sums, as nnU-Net's
    assert _predictor(trained, folds=(0,), onnx=True, bf16=False).network.fast_encoder is not None


def test_the_memory_cap_sets_the_tiles_per_call(trained, tmp_path, monkeypatch):
    from desam_nnu.inference.tiles import tile_working_bytes
    image = _write_case(tmp_path / "in", "big", shape_zyx=(1, 80, 96))
    p = _predictor(trained, use_mirroring=False, prompt_overrides={"mode": "box"})  # a CPU, no cap given: one a call
    sizes = _batch_sizes(p)
    p.predict_logits_from_preprocessed_data(_preprocessed(p, image))
    assert p.tiles_per_call == 1 and set(sizes) == {1} and len(sizes) > 1
    monkeypatch.setattr(tiles, "CPU_TILES_PER_CALL", tiles.MAX_TILES_PER_CALL)  # a device that gains from batches
    p = _predictor(trained, use_mirroring=False, prompt_overrides={"mode": "box"}, tile_memory_cap=1)  # a tiny cap: one tile a call
    sizes = _batch_sizes(p)
    p.predict_logits_from_preprocessed_data(_preprocessed(p, image))
    assert p.tiles_per_call == 1 and set(sizes) == {1}
    per_tile = tile_working_bytes(p.desam)
    assert 0 < per_tile < 2 ** 24  # the tiny encoder at 64 px: well under 16 MiB a tile
    p = _predictor(trained, use_mirroring=False, prompt_overrides={"mode": "box"},
                   tile_memory_cap=3 * per_tile + per_tile // 2)
    sizes = _batch_sizes(p)
    p.predict_logits_from_preprocessed_data(_preprocessed(p, image))
    assert p.tiles_per_call == 3 and max(sizes) == 3
    with pytest.raises(ValueError, match="tiles per call 0"):
        DeSAMPredictor(tiles_per_call=0)


def test_blank_tiles_are_skipped_in_batches_too(trained, tmp_path, monkeypatch):
    """Slices 1 and 3 of 5 blank (inside: nnU-Net's crop keeps them): their tiles never reach the network,
    and come out background."""
    images, _ = synthetic_case((5, 40, 48), np.random.default_rng(5))
    images[0, [1, 3]] = 0
    write_nifti(images[0], str(tmp_path / "c_0000.nii.gz"), SPACING)
    monkeypatch.setattr(DeSAM, "grid_candidates", _sure_of_class_one)
    p = _predictor(trained, use_mirroring=False, tiles_per_call=8)
    data = _preprocessed(p, tmp_path / "c_0000.nii.gz")
    logits = p.predict_logits_from_preprocessed_data(data).float()
    slicers = p._internal_get_sliding_window_slicers(data.shape[1:])
    informative = [s for s in slicers if data[s].amax() > data[s].amin()]
    assert 0 < len(informative) < len(slicers) and p.network.tile_calls == len(informative)
    blank = [i for i in range(data.shape[1]) if data[:, i].amax() == data[:, i].amin()]
    assert blank == [1, 3] and (logits[:, blank].argmax(0) == 0).all()
    assert (logits[:, [i for i in range(data.shape[1]) if i not in blank]].argmax(0) == 1).float().mean() > 0.5
