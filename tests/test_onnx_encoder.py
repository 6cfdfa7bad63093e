"""DeSAM's encoder in ONNX Runtime (inference/onnx_encoder.py): the features PyTorch gives, one export per batch
size, and PyTorch again when ONNX fails."""
import pytest
import torch

from desam_nnu.inference.onnx_encoder import OnnxEncoder
from desam_nnu.model import build_desam


@pytest.fixture(scope="module")
def desam():
    torch.manual_seed(0)
    return build_desam("tiny", image_size=64).eval()


@torch.inference_mode()
def test_features_equal_pytorchs_with_one_export_per_batch_size(desam):
    encoder = OnnxEncoder(desam)
    for b in (1, 2, 1):
        images = torch.rand(b, 3, 64, 64, generator=torch.Generator().manual_seed(b)) * 255
        got, want = encoder(images), desam.encode(images)
        assert [f.shape for f in got] == [f.shape for f in want] and len(want) > 1  # every level PDMM reads
        for g, w in zip(got, want):
            assert g.dtype == torch.float32 and not torch.equal(g, w)  # another runtime's rounding...
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)  # ...of the same arithmetic
    assert sorted(encoder.sessions) == [1, 2] and not encoder.failed


@torch.inference_mode()
def test_a_failed_export_falls_back_to_pytorch_with_one_warning(desam, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("the exporter cannot trace this\nsecond line")

    monkeypatch.setattr(torch.onnx, "export", broken)
    encoder = OnnxEncoder(desam)
    images = torch.rand(1, 3, 64, 64) * 255
    for _ in range(2):
        got = encoder(images)
        assert all(torch.equal(g, w) for g, w in zip(got, desam.encode(images)))
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["warning: the image encoder runs in PyTorch: ONNX Runtime failed (RuntimeError: the exporter "
                   "cannot trace this)"]
    assert not encoder.sessions
