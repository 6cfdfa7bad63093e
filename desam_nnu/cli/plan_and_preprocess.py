"""``desam_plan_and_preprocess -d ID``: nnU-Net's fingerprint, DeSAM's plans, nnU-Net's preprocessing."""
import argparse
from typing import List, Optional

from desam_nnu.cli.common import run_command


def build_parser() -> argparse.ArgumentParser:
    from desam_nnu.model.backbones import BACKBONES
    from desam_nnu.model.registry import NETWORKS

    p = argparse.ArgumentParser(
        prog="desam_plan_and_preprocess",
        description="Fingerprint a dataset in $nnUNet_raw, write DeSAMPlans.json (configuration desam_2d) and "
                    "preprocess it into $nnUNet_preprocessed.")
    p.add_argument("-d", "--dataset", required=True, help="dataset id (4) or name (Dataset004_Hippocampus)")
    p.add_argument("-np", type=int, default=None, dest="num_processes",
                   help="worker processes for fingerprinting and preprocessing (default: nnU-Net's, at most "
                        "the number of cores)")
    p.add_argument("--verify_dataset_integrity", action="store_true",
                   help="check every case first: readable, no NaN, image/label geometry, declared label values")
    p.add_argument("--backbone", default=None, choices=sorted(BACKBONES),
                   help="image encoder the plans are made for (default: the ViT of --sam-checkpoint or "
                        "$DESAM_SAM_CHECKPOINT, else medsam_lite, pretrained and CPU-friendly)")
    p.add_argument("--family", default="desam", choices=sorted(NETWORKS),
                   help="network family the plans are made for (default desam; dapsam: prompt-free, adapters "
                        "in the encoder; dbsam: box-prompted, a conv branch mixed into the encoder; masksam: "
                        "prompt-free over 3D patches, the masksam_3d configuration). The plans replace the "
                        "dataset's DeSAMPlans.json; trained models keep their own copy")
    p.add_argument("--sam-checkpoint", default=None,
                   help="an official SAM checkpoint (sam_vit_*.pth); picks vit_b/l/h by its size")
    p.add_argument("--image-size", type=int, default=None,
                   help="SAM input edge in pixels (default: chosen from the median slice, see README)")
    p.add_argument("--clean", action="store_true", help="recompute the dataset fingerprint even if it exists")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)

    def work() -> None:
        from desam_nnu.planners.plan_and_preprocess import plan_and_preprocess

        plan_and_preprocess(args.dataset, num_processes=args.num_processes,
                            verify_dataset_integrity=args.verify_dataset_integrity, backbone=args.backbone,
                            image_size=args.image_size, clean=args.clean, sam_checkpoint=args.sam_checkpoint,
                            family=args.family)

    return run_command(work)


if __name__ == "__main__":
    raise SystemExit(main())
