"""Slim checkpoints (desam_nnu.frozen_encoder) on a small module: what is left out, what comes back, and the
errors for a missing or different frozen-encoder file."""
from pathlib import Path

import pytest
import torch
from torch import nn

from desam_nnu.frozen_encoder import (MARKER, FrozenEncoderError, expand_weights, filled_on_load, slim_on_save,
                                      write_frozen_encoder)

IDENTITY = {"backbone": "toy", "weights": "random"}


class Toy(nn.Module):
    """An encoder with a parameter, a buffer-holding norm and an 'adapter' that trains, and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.image_encoder = nn.ModuleDict({"proj": nn.Linear(6, 4), "norm": nn.BatchNorm1d(4),
                                            "adapter": nn.Linear(4, 4)})
        self.head = nn.Linear(4, 2)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoints_leave_out_the_frozen_encoder_and_get_it_back(tmp_path):
    torch.manual_seed(0)
    net = Toy()
    frozen = write_frozen_encoder(net, str(tmp_path), IDENTITY)
    (path,) = tmp_path.glob("frozen_encoder_*.pth")
    assert path.name == frozen.file == f"frozen_encoder_{frozen.sha256[:16]}.pth"
    mtime = path.stat().st_mtime_ns
    assert write_frozen_encoder(net, str(tmp_path), IDENTITY) == frozen and path.stat().st_mtime_ns == mtime
    with torch.no_grad():  # training moves the adapter and the head, nothing else
        net.image_encoder["adapter"].weight.add_(1.0)
        net.head.bias.add_(1.0)
    full = net.state_dict()
    with slim_on_save(net, frozen, str(tmp_path)):
        slim = net.state_dict()
    assert sorted(k for k in slim if k.startswith("image_encoder.")) == ["image_encoder.adapter.weight"]
    assert {"head.weight", "head.bias", MARKER} <= slim.keys()
    assert net.state_dict().keys() == full.keys()  # only while the block is open
    restored = expand_weights(slim, str(tmp_path), "ckpt")
    assert _same(restored, full)
    fresh = Toy()
    with pytest.raises(RuntimeError, match=MARKER):  # a slim checkpoint never loads silently without its encoder
        fresh.load_state_dict(slim)
    with filled_on_load(fresh, str(tmp_path), "ckpt"):
        fresh.load_state_dict(slim)
    assert _same(fresh.state_dict(), full)


def test_full_weights_pass_through_unchanged(tmp_path):
    weights = Toy().state_dict()
    assert _same(expand_weights(weights, str(tmp_path), "ckpt"), weights)
    fresh = Toy()
    with filled_on_load(fresh, str(tmp_path), "ckpt"):
        fresh.load_state_dict(weights)
    assert _same(fresh.state_dict(), weights)


def test_a_missing_or_different_encoder_file_is_one_line_naming_it(tmp_path):
    net = Toy()
    frozen = write_frozen_encoder(net, str(tmp_path), IDENTITY)
    with slim_on_save(net, frozen, str(tmp_path)):
        slim = net.state_dict()
    path = Path(tmp_path) / frozen.file
    other = Toy()
    torch.save({"tensors": {k: v for k, v in other.state_dict().items() if k.startswith("image_encoder.")},
                "sha256": frozen.sha256, "identity": IDENTITY}, path)  # same name and record, other weights
    with pytest.raises(FrozenEncoderError) as e:
        expand_weights(slim, str(tmp_path), "fold_0/checkpoint_final.pth")
    assert str(path) in str(e.value) and "not the frozen image encoder" in str(e.value) and "\n" not in str(e.value)
    path.unlink()
    with pytest.raises(FrozenEncoderError) as e:
        expand_weights(slim, str(tmp_path), "fold_0/checkpoint_final.pth")
    message = str(e.value)
    assert str(path) in message and "missing" in message and "backbone toy" in message and "\n" not in message


def test_folds_share_one_read_of_the_encoder(tmp_path):
    net = Toy()
    frozen = write_frozen_encoder(net, str(tmp_path), IDENTITY)
    with slim_on_save(net, frozen, str(tmp_path)):
        slim = net.state_dict()
    loaded: dict = {}
    a = expand_weights(slim, str(tmp_path), "fold_0", loaded)
    b = expand_weights(slim, str(tmp_path), "fold_1", loaded)
    assert len(loaded) == 1 and a["image_encoder.proj.weight"] is b["image_encoder.proj.weight"]
