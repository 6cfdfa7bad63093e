"""``desam_plan_and_preprocess`` as a plain function: fingerprint, plan, preprocess.

Every step is nnU-Net's (fingerprint extractor, planner methods, preprocessor); this module orders
them, checks input up front, and makes the outputs appear whole or not at all: the plans are
written to a temporary name and renamed, and preprocessing runs into a staging folder that is
renamed over the final one only when every case succeeded.
"""
import os
import re
import shutil
from typing import Optional, Union

from batchgenerators.utilities.file_and_folder_operations import load_json
from nnunetv2.configuration import default_num_processes
from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
from nnunetv2.utilities.json_export import recursive_fix_for_json_export
from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

from desam_nnu.atomic import atomic_copy, atomic_write_json, pid_alive
from desam_nnu.config import PLANS_NAME, DeSAMConfig, plans_configuration
from desam_nnu.errors import DeSAMInputError
from desam_nnu.paths import env_dir, resolve_dataset_name
from desam_nnu.planners.dataset_checks import (check_dataset, check_dataset_json, check_files_complete,
                                                raise_if_problems)
from desam_nnu.model.registry import network_family
from desam_nnu.planners.planner import DeSAMPlanner, backbone_spec, channel_names, family_spec
from desam_nnu.planners.preprocessor import DeSAMPreprocessor


def default_processes() -> int:
    """nnU-Net's default worker count, but no more workers than cores."""
    return max(1, min(default_num_processes, os.cpu_count() or 1))


def _diagnose(error: Exception, dataset: dict, dataset_json: dict, rw_class, num_processes: int,
              what: str, where: str) -> DeSAMInputError:
    """Turn a failure deep inside nnU-Net into a one-line error naming the bad file."""
    if isinstance(error, DeSAMInputError):
        return error
    problems = check_dataset(dataset, dataset_json, rw_class, num_processes, full=False)
    try:
        raise_if_problems(problems)
    except DeSAMInputError as e:
        return e
    return DeSAMInputError(f"{where}: {what} failed ({type(error).__name__}: {error})")


def default_backbone(sam_checkpoint: Optional[str] = None) -> str:
    """The ViT of the given SAM checkpoint (``--sam-checkpoint`` or ``DESAM_SAM_CHECKPOINT``), else
    ``medsam_lite``, whose pretrained weights come with its package and which runs on a CPU."""
    from desam_nnu.model import CheckpointError, sam_backbone_of

    checkpoint = sam_checkpoint or os.environ.get("DESAM_SAM_CHECKPOINT") or None
    if checkpoint is None:
        return "medsam_lite"
    try:
        return sam_backbone_of(checkpoint)
    except (CheckpointError, FileNotFoundError) as e:
        raise DeSAMInputError(str(e)) from e


def plan_and_preprocess(dataset: Union[int, str], num_processes: Optional[int] = None,
                        verify_dataset_integrity: bool = False, backbone: Optional[str] = None,
                        image_size: Optional[int] = None, clean: bool = False,
                        sam_checkpoint: Optional[str] = None, family: str = "desam") -> dict:
    """Fingerprint (reused unless ``clean``), plan ``desam_2d`` for the network ``family`` and preprocess;
    returns the plans.

    ``backbone`` None picks :func:`default_backbone`.
    """
    num_processes = num_processes or default_processes()
    backbone = backbone or default_backbone(sam_checkpoint)
    raw_root = env_dir("nnUNet_raw")
    pre_root = env_dir("nnUNet_preprocessed", must_exist=False)
    name = resolve_dataset_name(dataset, raw_root)
    raw = os.path.join(raw_root, name)
    pre = os.path.join(pre_root, name)
    dataset_json_file = os.path.join(raw, "dataset.json")
    if not os.path.isfile(dataset_json_file):
        raise DeSAMInputError(f"{dataset_json_file}: missing")
    try:
        dataset_json = load_json(dataset_json_file)
    except ValueError as e:
        raise DeSAMInputError(f"{dataset_json_file}: not valid JSON ({e})") from e
    check_dataset_json(dataset_json, dataset_json_file)
    channel_names(dataset_json, dataset_json_file)
    backbone_spec(backbone)
    family_spec(family, backbone)
    cases = get_filenames_of_train_images_and_targets(raw, dataset_json)
    if not cases:
        raise DeSAMInputError(f"{raw}/imagesTr: no training cases ending in {dataset_json['file_ending']}")
    missing = [f for v in cases.values() for f in (*v["images"], v["label"]) if not os.path.isfile(f)]
    if missing:
        raise DeSAMInputError(f"{missing[0]}: file missing ({len(missing)} missing in all)")
    check_files_complete(cases)
    rw_class = determine_reader_writer_from_dataset_json(dataset_json, next(iter(cases.values()))["images"][0])

    if verify_dataset_integrity:
        raise_if_problems(check_dataset(cases, dataset_json, rw_class, num_processes, full=True))

    os.makedirs(pre, exist_ok=True)
    remove_stale_staging(pre)
    fingerprint_file = os.path.join(pre, "dataset_fingerprint.json")
    if clean or not os.path.isfile(fingerprint_file):
        try:
            DatasetFingerprintExtractor(name, num_processes).run(overwrite_existing=True)
        except Exception as e:
            if os.path.isfile(fingerprint_file):
                os.remove(fingerprint_file)
            raise _diagnose(e, cases, dataset_json, rw_class, num_processes, "fingerprint extraction", raw) from e
    else:
        print(f"Reusing the dataset fingerprint {fingerprint_file} (--clean recomputes it)")

    planner = DeSAMPlanner(name, backbone=backbone, image_size=image_size, family=family)
    plans = planner.plan_experiment()
    recursive_fix_for_json_export(plans)
    atomic_copy(dataset_json_file, os.path.join(pre, "dataset.json"))  # nnU-Net's preprocessor reads it there
    try:
        _preprocess_staged(plans, name, pre, cases, dataset_json, rw_class, num_processes)
    except DeSAMInputError:
        # a bad file found now may also have fed the fingerprint (SimpleITK reads NaN as 0): recompute next time
        if os.path.isfile(fingerprint_file):
            os.remove(fingerprint_file)
        raise
    _copy_ground_truth(cases, os.path.join(pre, "gt_segmentations"), dataset_json["file_ending"])
    atomic_write_json(plans, os.path.join(pre, PLANS_NAME + ".json"))
    _print_summary(plans, os.path.join(pre, PLANS_NAME + ".json"))
    return plans


def remove_stale_staging(folder: str) -> None:
    """Remove staging leftovers of runs that were killed (SIGKILL, power loss) and whose process is gone."""
    for entry in os.listdir(folder):
        m = re.search(r"\.staging(\d+)", entry)
        if m and not pid_alive(int(m.group(1))):
            path = os.path.join(folder, entry)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def _preprocess_staged(plans: dict, name: str, pre: str, cases: dict, dataset_json: dict, rw_class,
                       num_processes: int) -> None:
    """Run nnU-Net's preprocessing (our subclass) into a staging folder, then swap it in."""
    tag = f".staging{os.getpid()}"
    staging_plans_name = PLANS_NAME + tag
    configuration = plans_configuration(plans)
    final_id = plans["configurations"][configuration]["data_identifier"]
    staging = dict(plans, plans_name=staging_plans_name,
                   configurations={configuration: dict(plans["configurations"][configuration],
                                                       data_identifier=final_id + tag)})
    staging_plans_file = os.path.join(pre, staging_plans_name + ".json")
    staging_dir, final_dir = os.path.join(pre, final_id + tag), os.path.join(pre, final_id)
    atomic_write_json(staging, staging_plans_file)
    try:
        try:
            DeSAMPreprocessor(verbose=False).run(name, configuration, staging_plans_name, num_processes)
        except Exception as e:
            raise _diagnose(e, cases, dataset_json, rw_class, num_processes, "preprocessing",
                            os.path.dirname(cases[next(iter(cases))]["images"][0])) from e
        if os.path.isdir(final_dir):
            old = final_dir + tag + ".old"
            os.replace(final_dir, old)
            os.replace(staging_dir, final_dir)
            shutil.rmtree(old)
        else:
            os.replace(staging_dir, final_dir)
    finally:
        shutil.rmtree(staging_dir, ignore_errors=True)
        if os.path.exists(staging_plans_file):
            os.remove(staging_plans_file)


def _copy_ground_truth(cases: dict, folder: str, file_ending: str) -> None:
    """As nnU-Net does: labels beside the preprocessed data, for validation without the raw folder."""
    os.makedirs(folder, exist_ok=True)
    for key, case in cases.items():
        target = os.path.join(folder, key + file_ending)
        if not os.path.isfile(target) or os.path.getmtime(target) < os.path.getmtime(case["label"]):
            atomic_copy(case["label"], target)


def _print_summary(plans: dict, plans_file: str) -> None:
    name = plans_configuration(plans)
    cfg = DeSAMConfig.from_configuration(plans["configurations"][name])
    axis = cfg.slicing_axis
    print(f"Plans written to {plans_file}")
    patch = plans["configurations"][name]["patch_size"]
    print(f"  {name}: slices across axis {axis} of the images, patch {patch} voxels at "
          f"spacing {plans['configurations'][name]['spacing']}, {cfg.family} on {cfg.backbone} at "
          f"{cfg.image_size}x{cfg.image_size}, batch size {cfg.batch_size}")
    c = cfg.cache
    if not network_family(cfg.family).cacheable_features:
        print(f"  features: online (the {cfg.family} encoder's adapters train, so no embedding cache)")
        return
    print(f"  embedding cache estimate ({c.dtype}): {c.bytes_per_slice / 2 ** 20:.2f} MiB/slice x {c.num_slices} "
          f"slices = {c.total_bytes / 2 ** 30:.2f} GiB")
