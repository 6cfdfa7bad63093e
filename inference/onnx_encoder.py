"""DeSAM's image encoder through ONNX Runtime on a CPU: the same arithmetic as PyTorch's, in less time.

medsam_lite's encoder at 128 px took 142 ms a tile in ONNX Runtime against 233 ms in PyTorch on the 2-core CPU, its
features equal to 5e-6 (BENCHMARKS, encoder levers). :class:`OnnxEncoder` exports ``DeSAM.encode`` (normalisation,
padding and every feature level PDMM reads) on its first call for each batch size, into memory, and runs it there.
One export per batch size: the traced graph of TinyViT's reshapes fixes the batch (a dynamic batch axis failed at
batch 4). The export reads the weights as they are at that call, so the predictor attaches an OnnxEncoder only when
the weights can no longer change (every fold shares the frozen encoder, or there is one fold).

If the export or ONNX Runtime fails (an encoder the exporter cannot trace, a missing wheel), it says so in one line
on stderr and PyTorch encodes from then on.
"""
import io
import sys
import warnings
from typing import Dict, List

import torch
from torch import Tensor, nn

from desam_nnu.model import DeSAM


class _Encode(nn.Module):
    """``DeSAM.encode`` as a module for the exporter: images [B, 3, S, S] (0..255) -> every feature level."""

    def __init__(self, desam: DeSAM) -> None:
        super().__init__()
        self.desam = desam

    def forward(self, images: Tensor):
        return tuple(self.desam.encode(images))


class OnnxEncoder:
    """``encoder(images [B, 3, S, S]) -> features`` as ``desam.encode`` returns them (float32, on the CPU)."""

    def __init__(self, desam: DeSAM) -> None:
        self.desam = desam
        self.sessions: Dict[int, object] = {}  # batch size -> onnxruntime.InferenceSession
        self.failed = ""  # why ONNX Runtime is not used, once it failed

    def _session(self, images: Tensor):
        import onnxruntime as ort

        graph = io.BytesIO()
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on Python ints: the traced batch is meant to be fixed
            torch.onnx.export(_Encode(self.desam), (images.clone(),), graph, input_names=["images"], dynamo=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # what PyTorch would use
        options.inter_op_num_threads = 1
        # no arena: it keeps the largest tile's activations for the process's life (the 512 x 512 x 300 CT's peak went
        # from 6.6 to 4.9 GB without it); the tile time did not change beyond the noise (90-107 ms both ways)
        options.enable_cpu_mem_arena = False
        return ort.InferenceSession(graph.getvalue(), options, providers=["CPUExecutionProvider"])

    def __call__(self, images: Tensor) -> List[Tensor]:
        if self.failed or images.device.type != "cpu":
            return self.desam.encode(images)
        b = images.shape[0]
        try:
            if b not in self.sessions:
                self.sessions[b] = self._session(images)
            outputs = self.sessions[b].run(None, {"images": images.float().contiguous().numpy()})
        except Exception as e:  # noqa: BLE001 (any exporter or runtime failure: PyTorch encodes instead)
            self.failed = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            print(f"warning: the image encoder runs in PyTorch: ONNX Runtime failed ({self.failed})", file=sys.stderr)
            return self.desam.encode(images)
        return [torch.from_numpy(o) for o in outputs]
