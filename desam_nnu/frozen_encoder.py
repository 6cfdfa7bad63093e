"""Slim checkpoints: a frozen image encoder is held once per model folder, not in every checkpoint.

A fold trained with a frozen encoder (the default) writes the encoder's state at the start of training to
``<model folder>/frozen_encoder_<sha256[:16]>.pth`` (content-addressed, atomic: several folds, on one machine or
many, may write the same file), and its checkpoints (best, latest, final) keep only the ``image_encoder.*``
tensors that differ from that state (a family's trained adapters, say) plus one marker entry, ``MARKER``: a
uint8 tensor holding a JSON record of the encoder's identity (the file, the SHA-256 of its tensors, the
backbone and where its weights came from: the SAM file's SHA-256, the packaged weights' or ``random``).
ViT-H's 2.5 GB encoder was saved 3 times per fold before.

Loading (the predictor, ``desam_train --c``/``--val``) puts the file's tensors back under the checkpoint's own;
a missing or different file is one line naming it. A checkpoint without the marker (older, or
``--train-encoder``: full weights) loads as it is. The model folder stays portable: copy it whole.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Mapping, MutableMapping, Optional

import torch
from torch import Tensor, nn

from desam_nnu.atomic import atomic_path
from desam_nnu.model import CheckpointError

__all__ = ["MARKER", "PREFIX", "FrozenEncoder", "FrozenEncoderError", "expand_weights", "filled_on_load",
           "slim_on_save", "write_frozen_encoder"]

MARKER = "frozen_encoder_record"  # not a module name: strict loading without expansion fails loudly
PREFIX = "image_encoder."


class FrozenEncoderError(CheckpointError):
    """A slim checkpoint's frozen encoder file is missing or is not the one it was trained with."""


@dataclass(frozen=True)
class FrozenEncoder:
    """Where a model folder holds a frozen encoder, and what it is (the JSON record in every slim checkpoint)."""

    file: str  # the file name, in the model folder
    sha256: str  # of the tensors (names, dtypes, shapes, bytes), see ``tensors_sha256``
    identity: Mapping[str, Any]  # backbone, and the SAM file's SHA-256 or the packaged weights' or "random"

    def record(self) -> Tensor:
        """The marker tensor: the JSON record as uint8 [N]."""
        text = json.dumps({"file": self.file, "sha256": self.sha256, **self.identity}, sort_keys=True)
        return torch.tensor(list(text.encode()), dtype=torch.uint8)

    @staticmethod
    def from_record(record: Tensor) -> "FrozenEncoder":
        info = json.loads(bytes(record.tolist()).decode())
        return FrozenEncoder(info.pop("file"), info.pop("sha256"), info)

    def describe(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(self.identity.items()))


def tensors_sha256(tensors: Mapping[str, Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order: the encoder's identity."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def encoder_state(network: nn.Module) -> Dict[str, Tensor]:
    """The ``image_encoder.*`` entries of ``network``'s state dict (detached, on the CPU)."""
    return {k: v.detach().cpu() for k, v in network.state_dict().items() if k.startswith(PREFIX)}


def write_frozen_encoder(network: nn.Module, model_folder: str, identity: Mapping[str, Any]) -> Optional[FrozenEncoder]:
    """Write ``network``'s encoder state into ``model_folder`` once (content-addressed, atomic); None when the
    network has no image encoder."""
    state = encoder_state(network)
    if not state:
        return None
    digest = tensors_sha256(state)
    frozen = FrozenEncoder(f"frozen_encoder_{digest[:16]}.pth", digest, dict(identity))
    path = os.path.join(model_folder, frozen.file)
    if not os.path.isfile(path):
        os.makedirs(model_folder, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save({"tensors": state, "sha256": digest, "identity": dict(identity)}, tmp)
    return frozen


def _read_frozen(path: str, frozen: FrozenEncoder, checkpoint: str) -> Dict[str, Tensor]:
    """The file's tensors (memory-mapped: a fold ensemble shares them), checked against the record."""
    what = f"{checkpoint}: its frozen image encoder ({frozen.describe()})"
    if not os.path.isfile(path):
        raise FrozenEncoderError(f"{what} is held in {path}, which is missing: copy the whole model folder")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        tensors = saved["tensors"]
    except Exception as e:  # truncated, not a torch file, another layout
        raise FrozenEncoderError(f"{path}: cannot read the frozen encoder file ({type(e).__name__})") from e
    if saved.get("sha256") != frozen.sha256 or tensors_sha256(tensors) != frozen.sha256:
        raise FrozenEncoderError(f"{path}: not the frozen image encoder {checkpoint} was trained with "
                                 f"(sha256 {frozen.sha256[:16]}...; {frozen.describe()})")
    return tensors


def expand_weights(weights: Mapping[str, Tensor], model_folder: str, checkpoint: str,
                   loaded: Optional[MutableMapping[str, Dict[str, Tensor]]] = None) -> Dict[str, Tensor]:
    """A checkpoint's ``network_weights`` with its frozen encoder put back (the file's tensors, overridden by
    the checkpoint's own); without the marker, the weights as they are. ``loaded`` (file -> tensors) lets the
    folds of one model folder share one read and the same tensor objects."""
    if MARKER not in weights:
        return dict(weights)
    frozen = FrozenEncoder.from_record(weights[MARKER])
    path = os.path.join(model_folder, frozen.file)
    loaded = {} if loaded is None else loaded
    if path not in loaded:
        loaded[path] = _read_frozen(path, frozen, checkpoint)
    return {**loaded[path], **{k: v for k, v in weights.items() if k != MARKER}}


@contextlib.contextmanager
def slim_on_save(network: nn.Module, frozen: FrozenEncoder, model_folder: str) -> Iterator[None]:
    """While open, ``network.state_dict()`` leaves out every encoder tensor equal to the frozen file's, and
    carries the marker instead. For nnU-Net's ``save_checkpoint``, which takes the weights from ``state_dict``."""
    reference = torch.load(os.path.join(model_folder, frozen.file), map_location="cpu", weights_only=True,
                           mmap=True)["tensors"]

    def drop_frozen(module: nn.Module, state: Dict[str, Tensor], prefix: str, local_metadata: dict) -> None:
        for k in [k for k in state if k.startswith(prefix + PREFIX)]:
            ref = reference.get(k[len(prefix):])
            value = state[k]
            if ref is not None and ref.dtype == value.dtype and ref.shape == value.shape and \
                    torch.equal(ref, value.detach().cpu()):
                del state[k]
        state[prefix + MARKER] = frozen.record()

    handle = network.register_state_dict_post_hook(drop_frozen)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def filled_on_load(network: nn.Module, model_folder: str, checkpoint: str) -> Iterator[None]:
    """While open, ``network.load_state_dict`` takes slim weights: the frozen encoder comes back from the model
    folder first. For nnU-Net's ``load_checkpoint``, which accepts only a path (its dict branch is broken in
    2.8.1), so the weights cannot be expanded before it loads them."""

    def fill(module: nn.Module, state: Dict[str, Tensor], prefix: str, *args: Any) -> None:
        if prefix + MARKER not in state:
            return
        own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        full = expand_weights(own, model_folder, checkpoint)
        for k in [k for k in state if k.startswith(prefix)]:
            del state[k]
        state.update({prefix + k: v for k, v in full.items()})

    handle = network.register_load_state_dict_pre_hook(fill)
    try:
        yield
    finally:
        handle.remove()
