"""Part C of benchmarks/predict.py: peak RSS of desam_predict on one synthetic 512 x 512 x 300 CT."""
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from predict_setup import BIN, MIB, _check_run, _env, _measured, write_desam_model  # noqa: E402

CT_TARGET_BYTES = 6 * 1000 ** 3  # 6 GB
CT_ID, CT_NAME = 901, "SynthCT"
CT_SPACING_XYZ = (0.8, 0.8, 2.5)


def _write_ct(path: Path, shape_zyx, rng, center_zyx):
    """Write an int16 CT: air outside an elliptic body (soft tissue ~40 HU, noise) and a bright sphere
    (~300 HU, radius 30 mm); returns the sphere's labels."""
    import numpy as np
    z, y, x = shape_zyx
    yy, xx = np.meshgrid(np.arange(y) - y / 2, np.arange(x) - x / 2, indexing="ij")
    body = (yy / (0.42 * y)) ** 2 + (xx / (0.46 * x)) ** 2 < 1
    volume = np.empty(shape_zyx, np.int16)
    labels = np.zeros(shape_zyx, np.uint8)
    sx, sy, sz = CT_SPACING_XYZ
    radius_mm = 30.0
    for k in range(z):
        dz = (k - center_zyx[0]) * sz
        sl = np.where(body, 40 + 20 * rng.standard_normal((y, x)), -1000 + 5 * rng.standard_normal((y, x)))
        if abs(dz) < radius_mm:
            sphere = ((yy + y / 2 - center_zyx[1]) * sy) ** 2 + ((xx + x / 2 - center_zyx[2]) * sx) ** 2 < \
                radius_mm ** 2 - dz ** 2
            sl[sphere] = 300 + 20 * rng.standard_normal(int(sphere.sum()))
            labels[k][sphere] = 1
        volume[k] = np.clip(sl, -1024, 3071).astype(np.int16)
    _write_nifti(volume, path)
    return labels


def _write_nifti(array, path: Path) -> None:
    import SimpleITK as sitk
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(CT_SPACING_XYZ)
    img.SetOrigin((-200.0, -180.0, 0.0))
    sitk.WriteImage(img, str(path))


def synthetic_ct(args, tmp: Path, t_start: float) -> dict:
    import numpy as np

    def progress(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.0f} s] {msg}", flush=True)

    raw = tmp / "ct_raw"
    ds = raw / f"Dataset{CT_ID:03d}_{CT_NAME}"
    (ds / "imagesTr").mkdir(parents=True)
    (ds / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    train_shape = (40, 512, 512)
    for i in range(3):
        center = (20 + rng.integers(-5, 6), 256 + rng.integers(-60, 61), 256 + rng.integers(-60, 61))
        labels = _write_ct(ds / "imagesTr" / f"ct_{i:03d}_0000.nii.gz", train_shape, rng, center)
        _write_nifti(labels, ds / "labelsTr" / f"ct_{i:03d}.nii.gz")
    (ds / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "sphere": 1}, "numTraining": 3,
        "file_ending": ".nii.gz", "name": CT_NAME}, indent=2))
    env = _env(tmp / "ct", raw)
    logs = tmp / "logs"
    logs.mkdir(exist_ok=True)
    start = time.perf_counter()
    _check_run([str(BIN / "desam_plan_and_preprocess"), "-d", str(CT_ID), "-np", "2", "--backbone", "tiny"], env,
               logs / "plan_ct.log")
    plan_s = time.perf_counter() - start
    model = write_desam_model(env, ds.name)
    progress(f"synthetic CT: 3 training cases 512 x 512 x 40 planned in {plan_s:.0f} s (tiny: patch "
             f"{model['patch_size']}, input {model['image_size']})")
    depth = args.ct_depth
    inp = tmp / "ct_in"
    inp.mkdir()
    _write_ct(inp / "ct_test_0000.nii.gz", (depth, 512, 512), rng, (depth // 2, 256, 256))
    cmd = [str(BIN / "desam_predict"), "-i", str(inp), "-o", str(tmp / "ct_out"), "-d", str(CT_ID), "-f", "0",
           "-device", "cpu", "--prompt-mode", "box", "--disable-tta", "--tile-step", "1.0"]
    progress(f"synthetic CT 512 x 512 x {depth} written; predicting ({' '.join([Path(cmd[0]).name] + cmd[1:])})")
    r = _measured(cmd, env, tmp / "ct_out", logs / "predict_ct.log", 1)
    progress(f"synthetic CT predicted: {r['seconds']:.0f} s, peak tree RSS {r['peak_tree_rss'] / MIB:.0f} MiB")
    met = r["peak_tree_rss"] <= CT_TARGET_BYTES
    print("\nC. peak RSS of desam_predict on one synthetic CT, CPU, box mode, --disable-tta --tile-step 1.0, random "
          "weights\n")
    print("| volume (x y z) | backbone | patch | input | wall s | peak tree RSS | largest process | target |")
    print("|---|---|---|---|---|---|---|---|")
    single = r["peak_process_rss"]
    print(f"| 512 x 512 x {depth} | tiny | {model['patch_size'][0]} | {model['image_size']} | {r['seconds']:.0f} | "
          f"{r['peak_tree_rss'] / 1e9:.2f} GB ({r['peak_tree_rss'] / MIB:.0f} MiB) | "
          f"{'-' if single is None else f'{single / 1e9:.2f} GB'} | <= 6 GB {'met' if met else 'MISSED'} |")
    return {"shape_xyz": [512, 512, depth], "spacing_xyz": list(CT_SPACING_XYZ), "model": model, "plan_s": plan_s,
            "seconds": r["seconds"], "peak_tree_rss": r["peak_tree_rss"], "peak_process_rss": single,
            "target_bytes": CT_TARGET_BYTES, "met": met, "command": " ".join([Path(cmd[0]).name] + cmd[1:])}
