"""``desam_train ID FOLD``: train DeSAM on nnU-Net's preprocessed data with DeSAMTrainer."""
import argparse
import json
import os
from typing import Optional, Union

from desam_nnu.cli.common import command_main
from desam_nnu.config import PLANS_NAME, plans_configuration
from desam_nnu.errors import DeSAMInputError
from desam_nnu.paths import env_dir, resolve_dataset_name


def _fold(text: str) -> Union[int, str]:
    if text == "all":
        return text
    if text.isdigit() and 0 <= int(text) <= 4:
        return int(text)
    raise DeSAMInputError(f"fold {text!r}: use 0, 1, 2, 3, 4 or all")


def _trainer_class(name: str):
    from desam_nnu.trainers import find_trainers

    trainers = find_trainers()
    if name in trainers:
        return trainers[name]
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    try:
        return recursive_find_trainer_class_by_name(name)
    except RuntimeError:
        raise DeSAMInputError(f"trainer {name!r} not found; desam-nnu has {', '.join(sorted(trainers))}") from None


def train(dataset: Union[int, str], fold: Union[int, str], trainer: Optional[str] = None, plans: str = PLANS_NAME,
          sam_checkpoint: Optional[str] = None, prompt_mode: Optional[str] = None, continue_training: bool = False,
          validation_only: bool = False, npz: bool = False, device: Optional[str] = None,
          epochs: Optional[int] = None, iterations_per_epoch: Optional[int] = None,
          val_iterations: Optional[int] = None, cache_dtype: Optional[str] = None, train_encoder: bool = False,
          use_cache: Optional[bool] = None, time_budget: Optional[float] = None, cache_only: bool = False,
          num_parts: int = 1, part_id: int = 0, num_gpus: int = 1):
    """Build the trainer (None: the plans' family's own, e.g. DeSAMTrainer), resume or load as asked, train, then
    run the final validation; returns the trainer. ``cache_only``: build part ``part_id`` of ``num_parts`` of the
    embedding cache instead, and stop. ``num_gpus`` > 1: as many DDP processes (GPUs, or CPU processes with
    ``device="cpu"``), each running this function as one rank; returns None."""
    given = dict(locals())
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.run.run_training import maybe_load_checkpoint

    fold = _fold(str(fold))
    pre_root = env_dir("nnUNet_preprocessed")
    env_dir("nnUNet_results", must_exist=False)
    name = resolve_dataset_name(dataset, pre_root)
    plans_file = os.path.join(pre_root, name, plans + ".json")
    if not os.path.isfile(plans_file):
        raise DeSAMInputError(f"{plans_file}: not found; run desam_plan_and_preprocess -d {dataset} first")
    plans_dict = load_json(plans_file)
    configuration = plans_configuration(plans_dict)
    data_dir = os.path.join(pre_root, name, plans_dict["configurations"][configuration]["data_identifier"])
    if not os.path.isdir(data_dir):
        raise DeSAMInputError(f"{data_dir}: preprocessed data missing; run desam_plan_and_preprocess -d {dataset}")
    if continue_training and validation_only:
        raise DeSAMInputError("--c and --val exclude each other")
    if cache_only and (continue_training or validation_only or use_cache is False):
        raise DeSAMInputError("--cache-only builds the cache and stops: not with --c, --val or --no-cache")
    if (num_parts, part_id) != (1, 0) and not cache_only:
        raise DeSAMInputError("-num_parts/-part_id split the cache build: use them with --cache-only")
    plans_dict["continue_training"] = continue_training
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if num_gpus != 1:
        _check_processes(num_gpus, dev, cache_only, plans_dict["configurations"][configuration]["batch_size"])
        from desam_nnu.trainers.distributed import spawn
        spawn(num_gpus, dev.type, _train_rank, dict(given, device=dev.type, num_gpus=1))
        return None
    from desam_nnu.model.registry import network_family
    if trainer is None:
        from desam_nnu.trainers import default_trainer
        trainer = default_trainer(plans_dict["configurations"][configuration]["desam"].get("family", "desam"))
    t = _trainer_class(trainer)(plans=plans_dict, configuration=configuration, fold=fold,
                                dataset_json=load_json(os.path.join(pre_root, name, "dataset.json")), device=dev)
    saved = os.path.join(t.output_folder, "desam_options.json")
    if (continue_training or validation_only) and os.path.isfile(saved):
        options = json.load(open(saved))
        sam_checkpoint = sam_checkpoint or options.get("sam_checkpoint")
        prompt_mode = prompt_mode or options.get("prompt_mode")
        cache_dtype = cache_dtype or options.get("cache_dtype")
        train_encoder = train_encoder or options.get("train_encoder", False)
        use_cache = options.get("use_cache") if use_cache is None else use_cache
        epochs = epochs or options.get("num_epochs")
        iterations_per_epoch = iterations_per_epoch or options.get("num_iterations_per_epoch")
    if t.desam.prompts is None and prompt_mode:
        raise DeSAMInputError(f"--prompt-mode {prompt_mode}: the {t.desam.family} family has no prompts")
    if use_cache and not network_family(t.desam.family).cacheable_features:
        raise DeSAMInputError(f"--cache: {t.desam.family} encodes online (adapters in its encoder train)")
    overrides = {"sam_checkpoint": sam_checkpoint, "prompt_mode": prompt_mode, "cache_dtype": cache_dtype,
                 "train_encoder": train_encoder, "num_epochs": epochs, "num_iterations_per_epoch": iterations_per_epoch,
                 "num_val_iterations_per_epoch": val_iterations, "time_budget": (time_budget or 0) * 60}
    for attr, value in overrides.items():  # what the command line (or the continued run) sets; the rest: trainer's
        if value:
            setattr(t, attr, value)
    if use_cache is not None:  # False is a choice too
        t.use_cache = use_cache
    if cache_only:
        t.initialize()
        t.build_cache(num_parts, part_id)
        return t
    maybe_load_checkpoint(t, continue_training, validation_only)
    if not validation_only:
        t.run_training()
    t.perform_actual_validation(npz)
    return t


def _check_processes(num_gpus: int, device, cache_only: bool, batch_size: int) -> None:
    import torch
    if num_gpus < 1:
        raise DeSAMInputError(f"-num_gpus {num_gpus}: use 1 or more")
    if cache_only:
        raise DeSAMInputError("-num_gpus: --cache-only splits with -num_parts/-part_id, one process per part")
    if device.type == "cuda" and num_gpus > torch.cuda.device_count():
        raise DeSAMInputError(f"-num_gpus {num_gpus}: only {torch.cuda.device_count()} GPU(s) visible")
    if batch_size < num_gpus:
        raise DeSAMInputError(f"-num_gpus {num_gpus}: the plans' batch size {batch_size} cannot be shared by "
                              f"{num_gpus} processes")


def _train_rank(kwargs: dict) -> None:
    """One DDP rank (``distributed.spawn``): the same training, in a process of the group."""
    train(**kwargs)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="desam_train", description="Train DeSAM (configuration desam_2d of "
                                "DeSAMPlans.json) on one fold; results go to $nnUNet_results as nnU-Net's do.")
    p.add_argument("dataset", help="dataset id (4) or name (Dataset004_Hippocampus)")
    p.add_argument("fold", help="0-4 (nnU-Net's 5-fold splits_final.json) or all")
    p.add_argument("-tr", default=None, dest="trainer",
                   help="trainer class (default: the plans' family's own: DeSAMTrainer, DAPSAMTrainer or DBSAMTrainer)")
    p.add_argument("-p", default=PLANS_NAME, dest="plans")
    p.add_argument("--sam-checkpoint", default=None,
                   help="SAM weights (sam_vit_*.pth); default $DESAM_SAM_CHECKPOINT; not needed for tiny")
    p.add_argument("--prompt-mode", choices=["points", "box", "mixed"], default=None,
                   help="points (the paper), box (whole-slice box) or mixed (each slice one or the other: trains "
                        "both prediction modes); default: the plans' (mixed)")
    p.add_argument("--c", action="store_true", dest="continue_training", help="continue from the last checkpoint")
    p.add_argument("--val", action="store_true", dest="validation_only", help="only run the final validation")
    p.add_argument("--npz", action="store_true", help="also save validation probabilities")
    p.add_argument("-device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    p.add_argument("-num_gpus", type=int, default=1,
                   help="train on this many GPUs with torch.distributed (DDP, as nnUNetv2_train -num_gpus); with "
                        "-device cpu, this many CPU processes (gloo)")
    p.add_argument("--epochs", type=int, default=None, help="default 100; with --time-budget, as many as fit")
    p.add_argument("--iterations", type=int, default=None, dest="iterations_per_epoch",
                   help="training iterations per epoch (default nnU-Net's 250; 50 with --time-budget)")
    p.add_argument("--val-iterations", type=int, default=None,
                   help="pseudo-validation iterations per epoch (default nnU-Net's ratio: 1 per 5 training iterations)")
    p.add_argument("--cache-dtype", choices=["float16", "int8", "float32"], default=None,
                   help="embedding cache precision (default float16; int8 is per-channel quantised, 4x smaller)")
    features = p.add_mutually_exclusive_group()
    features.add_argument("--cache", action="store_true", dest="use_cache", default=None,
                          help="read the frozen encoder's features from the embedding cache (default: the plans' "
                               "auto, the cache when it pays for itself in this run)")
    features.add_argument("--no-cache", action="store_false", dest="use_cache",
                          help="encode every batch online, with nnU-Net's augmentation (no cache build)")
    p.add_argument("--train-encoder", action="store_true", help="train the image encoder too (online encoding)")
    p.add_argument("--time-budget", type=float, default=None,
                   help="train within this many minutes (cache build included, final validation not), the "
                        "learning rate decaying to the budget's end")
    p.add_argument("--cache-only", action="store_true",
                   help="build the embedding cache (any fold: it is per dataset) and stop; with -num_parts/-part_id "
                        "several processes or machines sharing the preprocessed folder build one cache together")
    p.add_argument("-num_parts", type=int, default=1, help="with --cache-only: split the cases into this many parts")
    p.add_argument("-part_id", type=int, default=0,
                   help="with --cache-only: the part this run builds, 0 to num_parts - 1 (every num_parts-th case)")
    return p


main = command_main(build_parser, train)


if __name__ == "__main__":
    raise SystemExit(main())
