"""What the parts of benchmarks/predict.py share: environments, model folders written as the trainers
leave them, prediction commands and their measurement (wall time, peak RSS of the process tree)."""
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from predict_inprocess import DATASET_ID, GRID_IOU_THRESH  # noqa: E402
from proc_tree import measure  # noqa: E402

BIN = Path(sys.executable).parent
MIB = 2 ** 20
THREADS = 0  # --threads: 0 leaves the commands' own thread counts (all cores)


def _env(root: Path, raw: Path) -> dict:
    env = dict(os.environ, nnUNet_compile="f", nnUNet_n_proc_DA="1", nnUNet_raw=str(raw),
               nnUNet_preprocessed=str(root / "preprocessed"), nnUNet_results=str(root / "results"))
    if THREADS:
        # torch's intra-op threads: OMP_NUM_THREADS where nothing sets them (desam_predict, --one);
        # nnUNetv2_predict sets all cores itself, and both predictors cap them at nnUNet_def_n_proc
        # while predicting (nnUNetPredictor.predict_logits_from_preprocessed_data)
        env.update(OMP_NUM_THREADS=str(THREADS), MKL_NUM_THREADS=str(THREADS), nnUNet_def_n_proc=str(THREADS))
    for k in ("nnUNet_preprocessed", "nnUNet_results"):
        os.makedirs(env[k], exist_ok=True)
    return env


def _check_run(cmd: List[str], env: dict, log: Path) -> None:
    with open(log, "w") as f:
        done = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode:
        sys.exit(f"error: {' '.join(cmd)} failed (exit {done.returncode}):\n{log.read_text()[-3000:]}")


def write_desam_model(env: dict, dataset_name: str) -> dict:
    """A random-weight model folder as desam_train leaves it; returns the plans' DeSAM settings."""
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from desam_nnu.planners.plans import DeSAMPlansManager

    pre = Path(env["nnUNet_preprocessed"], dataset_name)
    plans = load_json(str(pre / "DeSAMPlans.json"))
    cfg = DeSAMPlansManager(plans).get_configuration("desam_2d").desam
    folder = Path(env["nnUNet_results"], dataset_name, "DeSAMTrainer__DeSAMPlans__desam_2d")
    (folder / "fold_0").mkdir(parents=True)
    shutil.copy(pre / "DeSAMPlans.json", folder / "plans.json")
    shutil.copy(pre / "dataset.json", folder / "dataset.json")
    torch.manual_seed(0)
    network = cfg.build_network()
    torch.save({"network_weights": network.state_dict(), "trainer_name": "DeSAMTrainer",
                "init_args": {"configuration": "desam_2d"}, "inference_allowed_mirroring_axes": (0, 1)},
               folder / "fold_0" / "checkpoint_final.pth")
    return {"backbone": cfg.backbone, "image_size": cfg.image_size, "patch_size": list(cfg.patch_size)}


def write_nnunet_model(env: dict, dataset_name: str) -> dict:
    """nnU-Net's 2d configuration with random weights, as nnUNetv2_train leaves the model folder."""
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pre = Path(env["nnUNet_preprocessed"], dataset_name)
    dataset_json = load_json(str(pre / "dataset.json"))
    plans_manager = PlansManager(load_json(str(pre / "nnUNetPlans.json")))
    cm = plans_manager.get_configuration("2d")
    torch.manual_seed(0)
    network = nnUNetTrainer.build_network_architecture(
        plans_manager, cm, determine_num_input_channels(plans_manager, cm, dataset_json),
        plans_manager.get_label_manager(dataset_json).num_segmentation_heads, enable_deep_supervision=False)
    folder = Path(env["nnUNet_results"], dataset_name, "nnUNetTrainer__nnUNetPlans__2d")
    (folder / "fold_0").mkdir(parents=True)
    shutil.copy(pre / "nnUNetPlans.json", folder / "plans.json")
    shutil.copy(pre / "dataset.json", folder / "dataset.json")
    torch.save({"network_weights": network.state_dict(), "trainer_name": "nnUNetTrainer",
                "init_args": {"configuration": "2d"}, "inference_allowed_mirroring_axes": (0, 1)},
               folder / "fold_0" / "checkpoint_final.pth")
    return {"patch_size": list(cm.patch_size), "batch_size": cm.batch_size}


def _input_folder(folder: Path, images: List[Path]) -> Path:
    folder.mkdir(parents=True)
    for image in images:
        os.symlink(image, folder / image.name)
    return folder


def _predict_cmd(backbone_mode: str, inp: Path, out: Path, dataset: int = DATASET_ID) -> List[str]:
    if backbone_mode == "nnunet":
        return [str(BIN / "nnUNetv2_predict"), "-i", str(inp), "-o", str(out), "-d", str(dataset), "-c", "2d",
                "-f", "0", "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1"]
    cmd = [str(BIN / "desam_predict"), "-i", str(inp), "-o", str(out), "-d", str(dataset), "-f", "0", "-device", "cpu",
           "--disable-tta"]
    return cmd + ([f"--iou-thresh={GRID_IOU_THRESH:g}"] if backbone_mode == "grid" else ["--prompt-mode", "box"])


def _measured(cmd: List[str], env: dict, out: Path, log: Path, expect: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = measure(cmd, env=env, log=str(log))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU seconds of the command and its reaped workers: less sensitive to other processes than wall time
    result["cpu_s"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    result["load_before"] = load
    written = len([f for f in os.listdir(out) if f.endswith(".nii.gz")]) if out.is_dir() else 0
    if result["returncode"] != 0 or written != expect:
        sys.exit(f"error: {' '.join(cmd)} failed (exit {result['returncode']}, {written}/{expect} written):\n"
                 f"{log.read_text()[-3000:]}")
    shutil.rmtree(out, ignore_errors=True)
    return result
