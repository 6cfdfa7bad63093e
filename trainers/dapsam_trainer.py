"""DAPSAMTrainer: the shared trainer (``base.py``) with the official DAPSAM recipe (wkklavis/DAPSAM, train.py and
trainer.py): adapters, prompt generator and mask decoder trained, the ViT frozen; prompt-free.

- loss: ``0.2 * BCE + 0.8 * Dice`` on sigmoids, Dice over the batch with smooth 1 (``loss.DAPSAMLoss``);
- optimiser: AdamW, lr 5e-4, weight decay 0.1; per iteration a linear warm-up, then poly 0.9 to 0 at the
  end of training (the official stops at 80% of its poly schedule, at epoch 160 of 200; here the decay
  completes, as nnU-Net's and DeSAM's schedules do), or at the end of the time budget. The warm-up is the
  official's 250 iterations, or 1% of the schedule when that is shorter (its 250 iterations are 1% of
  nnU-Net's 100 x 250-iteration schedule, 0.5% of its own): on hippocampus at 128 px a CPU iteration
  took about 7 s, so 250 iterations would fill a whole 30-minute budget with warm-up;
- batch 8 (the planner's); features always online (the adapters change the encoder's features);
- input: as the plans' ``input_normalisation`` says (z-scored per image and channel on the ViTs, as the
  official; 0..1 on medsam_lite, LiteMedSAM's range);
- logits: the decoder's (1/4 of the input on the ViTs, the input on medsam_lite) resized to the patch,
  the same call as prediction (``inference.prompt_free.family_logits``); the final validation is the
  shared prompt-free one.
"""
from typing import Dict

from desam_nnu.inference.prompt_free import family_logits
from desam_nnu.trainers.base import SAMFamilyTrainer
from desam_nnu.trainers.loss import DAPSAMLoss
from desam_nnu.trainers.warmup_poly import WarmupPolyLR, WarmupPolyMixin

__all__ = ["DAPSAMTrainer", "WarmupPolyLR"]

WARMUP_ITERATIONS = 250
WARMUP_SHARE = WARMUP_ITERATIONS / (100 * 250)  # 1%: the official's 250 iterations in nnU-Net's default schedule


class DAPSAMTrainer(WarmupPolyMixin, SAMFamilyTrainer):
    family = "dapsam"
    # the official: AdamW 5e-4, weight decay 0.1, a linear warm-up; adapters inside the encoder train, so no cache
    recipe = {"initial_lr": 5e-4, "weight_decay": 0.1, "warmup_iterations": WARMUP_ITERATIONS,
              "warmup_share": WARMUP_SHARE, "use_cache": False}

    def _set_trainable(self) -> None:
        self.bare_network.freeze_backbone()

    def _build_loss(self) -> DAPSAMLoss:
        return DAPSAMLoss()

    def _forward(self, batch: Dict[str, object]):
        seg = batch["seg"].to(self.device)
        logits = family_logits(self.bare_network, batch["images"].to(self.device), self.desam)
        loss, _ = self.loss(logits, seg)
        return loss, logits, seg
