"""DBSAMTrainer: the shared trainer (``base.py``) with the official DB-SAM recipe (AlfredQin/DB-SAM,
``projects/db_sam``: its trainer and configuration at commit d15cd33):

- trainable: the adapter (conv branch, deformable blocks, fusion), SAM's neck, prompt encoder and mask decoder, as
  the official; the ViT (or TinyViT) frozen; with C > 1 classes the class embedding (ours, see ``DBSAM``);
- loss: Dice + cross-entropy on sigmoids with squared Dice terms (the official's MONAI
  ``DiceCELoss(sigmoid=True, squared_pred=True)``, i.e. ``DeSAMLoss`` without its IoU term), on the decoder's
  low-resolution logits resized to the patch, the same resize as prediction;
- optimiser: AdamW 1e-4, weight decay 0.01 on every trainable tensor; the first 5% of training at half the rate
  (the official's one warm-up epoch of 20), then poly 0.9 per iteration to 0 at the end of the schedule or time
  budget (``warmup_poly.py``);
- prompts: per slice and class a box. The official's is the ground truth's with each side moved outward by
  0-19 px of its 256-px frame; here 0 to ``19 * S / 256`` input pixels, the same share of the input. Half the
  boxes (and every box of a class absent from the slice) cover the whole input instead: the automatic mode's
  prompt, which the official never sees;
- batch 8 (the planner's; the official 1); features always online (the adapter changes the encoder's features).
"""
from typing import Dict

import torch.nn.functional as F

from desam_nnu.model.dbsam import trainable_parameters
from desam_nnu.prompts import training_boxes
from desam_nnu.rgb import network_input
from desam_nnu.trainers.base import SAMFamilyTrainer
from desam_nnu.trainers.loss import DeSAMLoss
from desam_nnu.trainers.warmup_poly import WarmupPolyMixin

OFFICIAL_JITTER_PX, OFFICIAL_FRAME = 19, 256  # np.random.randint(0, 20) per side, on 256 x 256 masks


class DBSAMTrainer(WarmupPolyMixin, SAMFamilyTrainer):
    family = "dbsam"
    recipe = {"initial_lr": 1e-4, "weight_decay": 0.01, "warmup_share": 1 / 20, "warmup_factor": 0.5,
              "use_cache": False, "whole_box_fraction": 0.5}

    def _set_trainable(self) -> None:
        trainable_parameters(self.bare_network)

    def _setup_summary(self) -> str:
        return f"box prompts (whole-tile box {self.whole_box_fraction:.0%}), "

    def _build_loss(self) -> DeSAMLoss:
        return DeSAMLoss()

    @property
    def jitter_px(self) -> int:
        """The official's 0-19 px box perturbation, as the same share of this input."""
        return round(OFFICIAL_JITTER_PX * self.desam.image_size / OFFICIAL_FRAME)

    def _forward(self, batch: Dict[str, object]):
        seg = batch["seg"].to(self.device)
        net, cfg = self.bare_network, self.desam
        x = network_input(batch["images"].to(self.device), cfg.channel_to_rgb, cfg.image_size, cfg.input_normalisation)
        boxes, classes = training_boxes(seg, cfg.num_classes, cfg.image_size, self.jitter_px, self.whole_box_fraction,
                                        batch["generator"])
        logits = net.decode(net.encode(x), boxes, classes)
        logits = F.interpolate(logits.float(), size=seg.shape[-2:], mode="bilinear", align_corners=False)
        loss, _ = self.loss(logits, seg)
        return loss, logits, seg

    def training_options(self) -> dict:
        return {**super().training_options(), "whole_box_fraction": self.whole_box_fraction,
                "box_jitter_px": self.jitter_px}
