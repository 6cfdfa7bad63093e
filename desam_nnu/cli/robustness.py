"""``desam_robustness -i IMAGES -ref LABELS -o OUT --models M1 [M2 ...]``: Dice under simulated scanner shifts."""
import argparse
from typing import List, Optional

from desam_nnu.cli.common import run_command


def build_parser() -> argparse.ArgumentParser:
    from desam_nnu.inference.shifts import LEVELS, SHIFTS
    p = argparse.ArgumentParser(
        prog="desam_robustness",
        description="Measure DeSAM and nnU-Net models side by side under simulated MRI scanner shifts (ROOD-MRI's "
                    "severities, TorchIO's transforms): every model sees the same shifted volumes.")
    p.add_argument("-i", required=True, dest="images", help="images in nnU-Net naming (CASE_0000.nii.gz, ...)")
    p.add_argument("-ref", required=True, dest="labels", help="reference labels CASE.nii.gz (never shifted)")
    p.add_argument("-o", required=True, dest="out",
                   help="shifted images, predictions, robustness.json and robustness.png; a rerun resumes here")
    p.add_argument("--models", nargs="+", required=True,
                   help="DeSAM models (dataset id or model folder) and nnU-Net v2 results folders "
                        "(e.g. $nnUNet_results/Dataset004_Hippocampus/nnUNetTrainer__nnUNetPlans__2d)")
    p.add_argument("--shifts", nargs="+", default=None, metavar="SHIFT",
                   help=f"default all: {', '.join(SHIFTS)}")
    p.add_argument("--levels", nargs="+", type=int, default=list(LEVELS), help="severities 1-5 (default all)")
    p.add_argument("--cases", type=int, default=None, help="the first N cases in sorted order (default all)")
    p.add_argument("--seed", type=int, default=0, help="the shifts' random draws (default 0)")
    p.add_argument("--disable-tta", action="store_true", help="no mirroring test-time augmentation, for every model")
    p.add_argument("-device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)

    def work() -> None:
        from desam_nnu.errors import DeSAMInputError
        from desam_nnu.inference.robustness import run_robustness
        from desam_nnu.inference.robustness_report import format_table
        if args.cases is not None and args.cases < 1:
            raise DeSAMInputError(f"--cases {args.cases}: use a positive number")
        result = run_robustness(args.images, args.labels, args.out, args.models, args.shifts, args.levels,
                                args.cases, args.seed, args.device, args.disable_tta)
        print(format_table(result))
        print(f"written {args.out}/robustness.json and {args.out}/robustness.png")

    return run_command(work)


if __name__ == "__main__":
    raise SystemExit(main())
