"""``desam_predict -i IN -o OUT``: whole 3D volumes in, 3D label maps with the original geometry out."""
import argparse
import sys
from typing import List, Optional, Sequence, Union

from desam_nnu.cli.common import run_command
from desam_nnu.config import PLANS_NAME
from desam_nnu.errors import DeSAMInputError

EXIT_SOME_CASES_FAILED = 1


def predict(input_folder: str, output_folder: str, dataset: Optional[Union[int, str]] = None,
            model_dir: Optional[str] = None, folds: Optional[Sequence[str]] = None, trainer: Optional[str] = None,
            plans: str = PLANS_NAME, checkpoint: str = "checkpoint_final.pth", prompt_mode: Optional[str] = None,
            grid: Optional[int] = None, iou_thresh: Optional[float] = None, top_k: Optional[int] = None,
            coarse_grid: Optional[bool] = None, bf16: bool = False, tile_step: float = 0.5,
            disable_tta: bool = False, save_probabilities: bool = False, preview: bool = False,
            device: Optional[str] = None, npp: int = 1, nps: int = 1,
            continue_prediction: bool = False, num_parts: int = 1, part_id: int = 0, prompts: Optional[str] = None):
    """Resolve the model, predict every case of ``input_folder`` (or part ``part_id`` of ``num_parts``), with the
    automatic prompts or the user's (``prompts``: a prompts file); returns the PredictionReport."""
    import torch
    from desam_nnu.inference.model_folder import resolve_model_folder
    from desam_nnu.inference.predictor import DeSAMPredictor

    if not 0 < tile_step <= 1:
        raise DeSAMInputError(f"--tile-step {tile_step}: use a value in (0, 1]")
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise DeSAMInputError(f"-num_parts {num_parts} -part_id {part_id}: use a part_id from 0 to num_parts - 1")
    automatic = {"--prompt-mode": prompt_mode, "--grid": grid, "--iou-thresh": iou_thresh, "--top-k": top_k,
                 "--coarse-grid": coarse_grid}
    if prompts and any(v is not None for v in automatic.values()):
        given = ", ".join(k for k, v in automatic.items() if v is not None)
        raise DeSAMInputError(f"--prompts {prompts} replaces the automatic prompts: drop {given}")
    folder = resolve_model_folder(model_dir, dataset, trainer, plans)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    predictor = DeSAMPredictor(tile_step_size=tile_step, use_mirroring=not disable_tta, device=dev, bf16=bf16,
                               prompt_overrides=dict(mode=prompt_mode, grid_points_per_side=grid,
                                                     iou_threshold=iou_thresh, top_k=top_k,
                                                     coarse_grid=coarse_grid))
    predictor.initialize_from_trained_model_folder(folder, folds, checkpoint)
    print(predictor.configuration_note)
    report = predictor.predict_folder(input_folder, output_folder, save_probabilities=save_probabilities,
                                      continue_prediction=continue_prediction, preview=preview,
                                      num_processes_preprocessing=npp, num_processes_export=nps,
                                      num_parts=num_parts, part_id=part_id, prompts_file=prompts)
    print(f"{len(report.written)} case(s) written to {output_folder}"
          + (f", {len(report.skipped)} already done" if report.skipped else "")
          + (f"; previews in {output_folder}/previews" if report.previews else ""))
    if report.all_background:
        from desam_nnu.inference.prompted import all_background_warning
        print(all_background_warning(report.all_background, predictor.prompts.iou_threshold), file=sys.stderr)
    if report.failures:
        print(f"{len(report.failures)} case(s) failed:", file=sys.stderr)
        for line in report.failures.values():
            print(f"  error: {line}", file=sys.stderr)
    return report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="desam_predict", description="Predict 3D label maps with a trained DeSAM model "
                                "(nnU-Net's preprocessing, sliding window, ensembling and export).")
    p.add_argument("-i", required=True, dest="input_folder",
                   help="images in nnU-Net naming: CASE_0000.nii.gz (CASE_0001... for more channels)")
    p.add_argument("-o", required=True, dest="output_folder", help="receives CASE.nii.gz, plans.json, dataset.json")
    p.add_argument("-d", default=None, dest="dataset",
                   help="dataset id or name in $nnUNet_results; optional when it holds one DeSAM model")
    p.add_argument("-m", default=None, dest="model_dir", help="a trained model folder (instead of -d)")
    p.add_argument("-f", nargs="+", default=None, dest="folds", help="folds to ensemble (default: all trained)")
    p.add_argument("-tr", default=None, dest="trainer",
                   help="trainer of the model (default: DeSAMTrainer, or the dataset's only model)")
    p.add_argument("-p", default=PLANS_NAME, dest="plans")
    p.add_argument("-chk", default="checkpoint_final.pth", dest="checkpoint")
    p.add_argument("--prompt-mode", choices=["grid", "box"], default=None,
                   help="grid: DeSAM's automatic mode (default, from the plans); box: one whole-tile box")
    p.add_argument("--prompts", default=None, metavar="PROMPTS.json",
                   help="boxes and clicks per case and class (README, 'Prompts from a file'); classes without "
                        "prompts come out empty; replaces the automatic mode")
    p.add_argument("--grid", type=int, default=None, help="grid points per side (default 9: 81 prompts)")
    p.add_argument("--iou-thresh", type=float, default=None, help="keep grid prompts with predicted IoU >= this (0.5)")
    p.add_argument("--top-k", type=int, default=None, help="fuse the k best kept prompts by predicted IoU (1)")
    p.add_argument("--coarse-grid", action="store_true", default=None,
                   help="grid mode scores every other grid point, then only around the best ones: about half of "
                        "PRIM's time, not the exact decode (its Dice cost: BENCHMARKS.md)")
    p.add_argument("--bf16", action="store_true",
                   help="DeSAM's image encoder in bfloat16 on a CPU with bf16 arithmetic: faster, not exact (its Dice "
                        "cost: BENCHMARKS.md)")
    p.add_argument("--tile-step", type=float, default=0.5, help="sliding-window step as a fraction of the patch")
    p.add_argument("--disable-tta", action="store_true", help="no mirroring test-time augmentation")
    p.add_argument("--save-probabilities", action="store_true", help="also write CASE.npz / CASE.pkl as nnU-Net")
    p.add_argument("--preview", action="store_true", help="write OUT/previews/CASE.png: slices with outlines")
    p.add_argument("-device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    p.add_argument("-npp", type=int, default=1, help="preprocessing worker processes (0: in this process)")
    p.add_argument("-nps", type=int, default=1, help="export worker processes (0: in this process)")
    p.add_argument("--continue-prediction", action="store_true", help="skip cases already in the output folder")
    p.add_argument("-num_parts", type=int, default=1,
                   help="split the cases into this many parts, e.g. one per GPU or machine (nnU-Net's option)")
    p.add_argument("-part_id", type=int, default=0,
                   help="which part this run predicts, 0 to num_parts - 1; parts can write into one output folder "
                        "at the same time")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = vars(build_parser().parse_args(argv))
    outcome = {}

    def work() -> None:
        outcome["report"] = predict(**args)

    code = run_command(work)
    if code == 0 and outcome["report"].failures:
        return EXIT_SOME_CASES_FAILED
    return code


if __name__ == "__main__":
    raise SystemExit(main())
