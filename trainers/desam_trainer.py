"""DeSAMTrainer: the shared trainer (``base.py``) training DeSAM's PRIM and PDMM, prompted.

What is DeSAM's (each in the smallest method that holds it):

- optimiser: Adam, lr 1e-4, no weight decay (the official recipe), poly decay 0.9 (nnU-Net's).
- trainable: PRIM and PDMM; the encoders stay frozen (``--train-encoder`` trains the image encoder too).
- prompts (``points`` mode, the paper): one random point per slice, half on foreground, always a
  positive label, IoU target 1 on the object and 0 elsewhere, full ground truth as mask target.
  ``box`` mode: the whole-slice box, no IoU term (as the official's whole-box script); ``mixed``: either,
  half each (the plans' default).
- loss: Dice + BCE on the masks, L1 on the predicted IoU (``loss.py``).
- final validation: ``DeSAMPredictor`` (``inference/``), as ``desam_predict`` predicts, storing every tile's
  candidates for ``desam_find_best_configuration``.
"""
import os
from dataclasses import asdict
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm
from batchgenerators.utilities.file_and_folder_operations import join, maybe_mkdir_p
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler

from desam_nnu.errors import DeSAMInputError
from desam_nnu.prompts import sample_training_points, whole_boxes
from desam_nnu.rgb import to_network_input
from desam_nnu.trainers.base import SAMFamilyTrainer
from desam_nnu.trainers.loss import DeSAMLoss


class DeSAMTrainer(SAMFamilyTrainer):
    family = "desam"
    recipe = {"initial_lr": 1e-4, "weight_decay": 0.0}  # the official: Adam 1e-4, no weight decay

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.prompt_mode = self.desam.prompts.train_mode

    def _set_trainable(self) -> None:
        self.bare_network.set_trainable(image_encoder=self.train_encoder)

    def _setup_summary(self) -> str:
        return f"prompts: {self.prompt_mode}, "

    def configure_optimizers(self):
        params = [p for p in self.network.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=self.initial_lr, weight_decay=self.weight_decay)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

    def _build_loss(self) -> DeSAMLoss:
        return DeSAMLoss()

    def set_deep_supervision_enabled(self, enabled: bool) -> None:
        self.bare_network.deep_supervision = False  # one output resolution; the loss is taken at the patch's

    def training_options(self) -> dict:
        return {"prompt_mode": self.prompt_mode, **super().training_options()}

    # ------------------------------------------------------------------ steps
    def _forward(self, batch: Dict[str, object]):
        if batch["features"] is not None:
            features = [f.to(self.device) for f in batch["features"]]
        else:
            x = to_network_input(batch["images"].to(self.device), self.desam.channel_to_rgb, self.desam.image_size)
            with self.step_part("encoder"):
                features = self.bare_network.encode(x)
        seg = batch["seg"].to(self.device)
        logits, iou, iou_target = self._decode_training_prompts(features, seg, batch["generator"])
        logits = F.interpolate(logits, size=seg.shape[-2:], mode="bilinear", align_corners=False)
        loss, parts = self.loss(logits, seg, iou, iou_target)
        return loss, logits, seg

    def _decode_training_prompts(self, features: List[torch.Tensor], seg: torch.Tensor, generator: torch.Generator):
        """Prompt each slice as ``prompt_mode`` says and decode.

        points: one random point per slice (the paper); box: the whole-slice box; mixed: each slice
        one or the other with probability 1/2, so that both prediction modes are trained. Returns
        logits [B, C, h, w], and the predicted IoU [n, C] with its target for the n point-prompted
        slices (None when there are none: box prompts have no IoU term, as the official's box script).
        """
        b = seg.shape[0]
        if self.prompt_mode == "mixed":
            use_box = torch.rand(b, generator=generator) < 0.5
        else:
            use_box = torch.full((b,), self.prompt_mode == "box")
        logits: Optional[torch.Tensor] = None
        iou = iou_target = None
        for boxed in (False, True):
            idx = torch.nonzero(use_box == boxed).flatten()
            if not idx.numel():
                continue
            feats = features if idx.numel() == b else [f[idx.to(f.device)] for f in features]
            if boxed:
                boxes = whole_boxes(idx.numel(), self.desam.image_size).to(self.device)
                part, _ = self.bare_network.decode(feats, boxes=boxes)
            else:
                coords, labels, target = sample_training_points(seg[idx.to(seg.device)].cpu(), self.desam.num_classes,
                                                                self.desam.patch_to_input_scale, generator=generator)
                part, iou = self.bare_network.decode(feats, points=(coords.to(self.device), labels.to(self.device)))
                iou_target = target.to(self.device)
            if idx.numel() == b:
                logits = part
            else:
                if logits is None:
                    logits = part.new_empty((b, *part.shape[1:]))
                logits = logits.index_copy(0, idx.to(part.device), part)
        return logits, iou, iou_target

    # ------------------------------------------------------------------ final validation
    def perform_actual_validation(self, save_probabilities: bool = False) -> None:
        """Predict the fold's validation cases as whole volumes with DeSAMPredictor, store every tile's
        candidates for ``desam_find_best_configuration`` and score the serving setting.

        The same path as ``desam_predict`` (nnU-Net's 2D sliding window over every slice, export to the
        original geometry), on the preprocessed cases, so the raw images need not be present. The
        setting scored in ``summary.json`` is the one ``desam_predict`` would use: the chosen
        configuration when the model folder has one, else the plans' defaults in a mode this fold was
        trained for. Each tile's record (``inference/candidates.py``) lets every other setting be
        scored later without the network. Mirroring runs on CUDA only: on a CPU it would quadruple
        the encoder work.
        """
        from desam_nnu.inference import candidates
        from desam_nnu.inference.configuration import read_configuration, serving_defaults
        from desam_nnu.inference.predictor import export_case_atomically
        from desam_nnu.inference.prompted import CandidateRecord, PromptedDeSAM, all_background_warning

        if self.local_rank != 0:  # under DDP, rank 0 validates every case
            return None
        dataset, val_keys, folder = self._validation_cases()
        store = candidates.store_folder(folder)
        maybe_mkdir_p(store)
        if os.path.isfile(join(store, candidates.META)):
            os.remove(join(store, candidates.META))  # incomplete until this validation has finished
        modes = self.desam.prompts.serves(self.prompt_mode)
        labels = self.label_manager.foreground_labels
        try:
            chosen = read_configuration(self.output_folder_base, modes, labels)
        except DeSAMInputError as e:
            self.print_to_log_file(f"WARNING: {e}", also_print_to_console=True)
            chosen = None
        prompts = chosen.prompts if chosen is not None else serving_defaults(self.desam, modes)
        top_k = max(max(self.desam.prompts.top_k_candidates), prompts.top_k)
        record = CandidateRecord(modes=modes, top_k=top_k)
        predictor = self._validation_predictor(PromptedDeSAM(self.bare_network, self.desam, prompts, record=record))
        use_mirroring = predictor.use_mirroring
        all_background, stored_bytes = [], 0
        self.print_to_log_file(f"Final validation with {'chosen ' if chosen else ''}prompts {prompts}; storing "
                               f"{'/'.join(modes)} candidates (top {top_k}) for desam_find_best_configuration",
                               also_print_to_console=True)
        for key in tqdm(val_keys, desc=f"Validation ({prompts.mode} prompts)"):
            data, _, _, properties = dataset.load_case(key)
            record.tiles = []
            logits, stats = predictor.predict_case(torch.from_numpy(np.asarray(data)))
            if stats.kept_no_prompt:
                all_background.append(key)
            stored_bytes += candidates.save_case(record, join(store, key + ".npz"))
            export_case_atomically(logits.cpu(), properties, self.configuration_manager, self.plans_manager,
                                   self.dataset_json, folder, key, save_probabilities)
        candidates.write_meta(store, {
            "cases": list(val_keys), "modes": list(modes), "top_k": top_k,
            "grid_points_per_side": prompts.grid_points_per_side, "use_mirroring": use_mirroring,
            "mirror_axes": list(self.inference_allowed_mirroring_axes or []),
            "tile_step_size": predictor.tile_step_size, "training_prompts": self.prompt_mode,
            "summary_prompts": asdict(prompts), "bytes": stored_bytes})
        if all_background and chosen is not None:
            self.print_to_log_file(all_background_warning(all_background, prompts.iou_threshold),
                                   also_print_to_console=True)
        elif all_background:  # nothing chosen yet: the stored candidates are what the choice is made from
            shown = ", ".join(all_background[:5]) + (" ..." if len(all_background) > 5 else "")
            self.print_to_log_file(
                f"note: grid mode kept no prompt on any slice of {len(all_background)} case(s) ({shown}) at the "
                f"plans' default IoU >= {prompts.iou_threshold:g} (a briefly trained IoU head); "
                f"desam_find_best_configuration {self.plans_manager.dataset_name} -f {self.fold} chooses the "
                f"threshold from the stored candidates", also_print_to_console=True)
        self._score_validation(folder)
        self.print_to_log_file(f"Stored validation candidates: {stored_bytes / 2 ** 20:.1f} MiB in {store}; "
                               f"desam_find_best_configuration {self.plans_manager.dataset_name} -f {self.fold} "
                               f"chooses the prompts from them", also_print_to_console=True)
