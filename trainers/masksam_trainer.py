"""MaskSAMTrainer: the shared trainer (``base.py``) with MaskSAM's official recipe (bxie9/MaskSAM, the ACDC
trainer ``MaskSAM_ACDC.py``) on the plans' ``masksam_3d`` configuration.

- data: nnU-Net's own 3D loader and augmentation (``nnUNetTrainer.get_dataloaders``: T x p x p patches, a third
  of them foreground-oversampled, spatial and intensity transforms, mirroring over all three axes), as the
  official, which changes nothing there; the 2D item index and embedding cache of the other families are not
  used. The input is the plans' 0..255 mapping at 0..1 (``inference.prompt_free.volume_input``); the official
  feeds nnU-Net's z-scores, which the stem's instance norm makes nearly the same;
- network: SAM frozen but for its slice embeddings, adapters and classifier; the wrapper (stem, prompt generator,
  heads) trained (``freeze_sam``); features online;
- loss: Hungarian matching per slice and the set criterion (``masksam_loss.py``), the official weights, with
  masks compared at half the patch's pixel count of random points (the official's 128 x 128 x 2 for its
  256 x 256 patch);
- optimiser: nnU-Net's SGD (momentum 0.99, Nesterov, weight decay 3e-5) at the official 1e-3 with nnU-Net's
  poly schedule (or the time budget's), as the ACDC trainer; the AMOS trainer's AdamW is not taken, because the
  ACDC trainer is the one whose network this is;
- pseudo-validation: nnU-Net's hard Dice of the argmax of the mixture; the final validation is the shared
  prompt-free one, through the predictor's 3D sliding window.
"""
from typing import Dict

import torch
from nnunetv2.training.loss.dice import get_tp_fp_fn_tn
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from desam_nnu.inference.prompt_free import volume_input
from desam_nnu.model.masksam import freeze_sam
from desam_nnu.trainers.base import SAMFamilyTrainer
from desam_nnu.trainers.masksam_loss import MaskSAMCriterion, slice_targets

__all__ = ["MaskSAMTrainer"]


class MaskSAMTrainer(SAMFamilyTrainer):
    family = "masksam"
    recipe = {"initial_lr": 1e-3, "weight_decay": 3e-5, "use_cache": False}
    # a 3D iteration takes 30-40 s on a 2-core CPU (medsam_lite, 4 x 64 x 64, batch 2): 50-iteration epochs would
    # outlast a 30-minute budget
    budget_epoch_iterations = 10

    def _set_trainable(self) -> None:
        freeze_sam(self.bare_network)

    def _build_loss(self) -> MaskSAMCriterion:
        return MaskSAMCriterion(self.label_manager.num_segmentation_heads,
                                num_points=self.desam.patch_size[0] * self.desam.patch_size[1] // 2)

    def get_dataloaders(self):
        """nnU-Net's own 3D loaders and transforms (the base's are 2D items), as the official trainer uses them."""
        return nnUNetTrainer.get_dataloaders(self)

    def _forward(self, batch: Dict[str, object]):
        """nnU-Net's batch (``data`` [B, C_in, T, p, p], ``target`` [B, 1, T, p, p]) -> (loss, the semantic mixture
        [B, 1 + C, T, p, p], target)."""
        target = batch["target"][0] if isinstance(batch["target"], list) else batch["target"]
        seg = target.to(self.device, non_blocking=True)
        net = self.bare_network
        x = volume_input(batch["data"].to(self.device, non_blocking=True))
        outputs = net.outputs(x)
        loss, _ = self.loss(outputs, slice_targets(seg))
        return loss, net.semantic(outputs, x.shape[0]), seg

    def validation_step(self, batch: dict) -> dict:
        """nnU-Net's pseudo-Dice: tp / fp / fn of the argmax against the labels, per foreground class."""
        with torch.autocast(self.device.type, enabled=self.device.type == "cuda"):
            loss, mixture, seg = self._forward(batch)
        predicted = torch.zeros_like(mixture).scatter_(1, mixture.argmax(1, keepdim=True), 1)
        tp, fp, fn, _ = get_tp_fp_fn_tn(predicted, seg.long(), axes=(0, 2, 3, 4))
        return {"loss": loss.detach().cpu().numpy(), "tp_hard": tp[1:].cpu().numpy(),
                "fp_hard": fp[1:].cpu().numpy(), "fn_hard": fn[1:].cpu().numpy()}
