"""``desam_find_best_configuration ID [-f FOLDS]``: prompts and postprocessing chosen from cross-validation."""
import argparse
from typing import List, Optional

from desam_nnu.cli.common import command_main
from desam_nnu.config import PLANS_NAME


def find_best(dataset: str, folds: List[str], trainer: Optional[str] = None, plans: str = PLANS_NAME,
              num_processes: int = 1) -> dict:
    """Run the selection, print its table and where the choice was written; returns the configuration."""
    from desam_nnu.inference.find_best import find_best_configuration

    result = find_best_configuration(dataset, folds, trainer, plans, num_processes)
    print(result["table"])
    print(f"written to {result['path']}; desam_predict follows it")
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="desam_find_best_configuration",
                                description="Choose DeSAM's inference configuration (grid or whole-box prompts, the "
                                "IoU threshold, top-k, nnU-Net's postprocessing) from the folds' validation results, "
                                "and write it into the model folder for desam_predict.")
    p.add_argument("dataset", help="dataset id (4) or name (Dataset004_Hippocampus)")
    p.add_argument("-f", nargs="+", default=["0", "1", "2", "3", "4"], dest="folds",
                   help="folds whose validation cases decide (default: 0 1 2 3 4)")
    p.add_argument("-tr", default=None, dest="trainer",
                   help="the trainer whose model to configure (default: DeSAMTrainer's, else the dataset's only model, "
                        "as desam_predict -d chooses)")
    p.add_argument("-p", default=PLANS_NAME, dest="plans")
    p.add_argument("-np", type=int, default=1, dest="num_processes", help="metric worker processes (default 1)")
    return p


main = command_main(build_parser, find_best)


if __name__ == "__main__":
    raise SystemExit(main())
