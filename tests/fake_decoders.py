"""Stand-ins for DeSAM.grid_candidates with fixed predicted IoUs and masks: the pipeline around them is under test."""
import torch

from desam_nnu.model import GridCandidates


def fixed_grid(iou: float, class_logits=(5.0, -5.0)):
    """A grid_candidates whose every prompt predicts ``iou`` for each class and masks each class with a constant
    logit (class c: ``class_logits[c]``), honouring ``top_k`` and ``iou_thresh`` as the real one does."""

    def grid_candidates(self, features, points, top_k=1, iou_thresh=float("-inf"), prompts_per_batch=128, coarse=False):
        h, w = self.mask_size(features)
        c = len(class_logits)
        logits = torch.stack([torch.full((h, w), float(v)) for v in class_logits])[None].repeat(top_k, 1, 1, 1)
        kept = torch.full((top_k, c), iou >= iou_thresh)
        ious = torch.where(kept, torch.full((top_k, c), float(iou)), torch.zeros(top_k, c))
        indices = torch.where(kept, torch.arange(top_k)[:, None].expand(top_k, c), torch.full((top_k, c), -1))
        return GridCandidates(logits * kept[..., None, None], ious, indices, kept, torch.full((81, c), float(iou)))

    return grid_candidates
