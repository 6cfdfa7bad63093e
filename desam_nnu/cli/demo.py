"""``desam_demo_dataset``: write the synthetic demo dataset (Dataset900_Demo) in nnU-Net raw format."""
import argparse
import os
from typing import List, Optional

from desam_nnu.cli.common import run_command


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="desam_demo_dataset",
        description="Write a synthetic MR-like dataset in nnU-Net raw format (two structures, anisotropic "
                    "spacing, oblique geometry): training cases in imagesTr/labelsTr, held-back cases in "
                    "imagesTs/labelsTs. A complete one already there is reused. Prints the dataset folder.")
    p.add_argument("-o", dest="raw_root", default=None, help="raw datasets folder (default: $nnUNet_raw)")
    p.add_argument("-d", dest="dataset_id", type=int, default=900, help="dataset id (default 900)")
    p.add_argument("-n", dest="num_cases", type=int, default=12, help="cases in all (default 12)")
    p.add_argument("--held-back", type=int, default=3, help="cases kept out of training, in imagesTs (default 3)")
    p.add_argument("--name", default="Demo", help="dataset name (default Demo: Dataset900_Demo)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0); the same seed, the same data")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)

    def work() -> None:
        from desam_nnu.demo import make_demo_dataset
        from desam_nnu.paths import env_dir

        raw_root = args.raw_root or env_dir("nnUNet_raw", must_exist=False)
        print(make_demo_dataset(os.path.abspath(raw_root), args.dataset_id, args.name, args.num_cases,
                                args.seed, args.held_back))

    return run_command(work)


if __name__ == "__main__":
    raise SystemExit(main())
