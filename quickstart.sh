#!/usr/bin/env bash
# Quick start on a fresh machine: set up .venv, then run the whole pipeline on one dataset:
# plan and preprocess, train fold 0 for a few minutes, predict the held-back cases with preview
# PNGs, evaluate them (Dice table).
#   ./quickstart.sh                 the synthetic demo dataset (Dataset900_Demo, written by desam_demo_dataset)
#   ./quickstart.sh DATASET_DIR     an nnU-Net raw dataset folder (DatasetXXX_Name with imagesTr, labelsTr,
#                                   dataset.json); held back: its imagesTs/labelsTs if it has both, else
#                                   the fold-0 validation cases
# Environment: DESAM_WORK (default ./work: nnUNet_raw, nnUNet_preprocessed, nnUNet_results, predictions),
# DESAM_QUICK_MINUTES (training budget, default 4), DESAM_DEVICE (cpu or cuda, default cpu),
# DESAM_SAM_CHECKPOINT (a SAM ViT checkpoint instead of the default medsam_lite backbone).
# The prompts are chosen from the fold-0 validation by desam_find_best_configuration, not set here.
set -euo pipefail
usage="usage: ./quickstart.sh [DATASET_DIR]"
here=$(cd "$(dirname "$0")" && pwd)
trap 'echo "interrupted: quick start stopped" >&2; exit 130' INT TERM

# --- input checks first: nothing is created before they pass
if [ $# -gt 1 ]; then echo "error: too many arguments; $usage" >&2; exit 2; fi
case "${1:-}" in -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0;; -*)
    echo "error: unknown option $1; $usage" >&2; exit 2;; esac
if [ $# -eq 1 ]; then
    dataset_dir=$(cd "$1" 2>/dev/null && pwd) || {
        echo "error: $1: dataset folder not found; give an nnU-Net raw dataset folder" \
             "(DatasetXXX_Name with imagesTr, labelsTr, dataset.json) or nothing for the demo dataset" >&2; exit 2; }
    name=$(basename "$dataset_dir")
    [[ $name =~ ^Dataset[0-9]{3}_.+ ]] || {
        echo "error: $dataset_dir: folder name must look like DatasetXXX_Name (e.g. Dataset004_Hippocampus)" >&2
        exit 2; }
    [ -f "$dataset_dir/dataset.json" ] || { echo "error: $dataset_dir/dataset.json: not found" >&2; exit 2; }
else
    dataset_dir= name=Dataset900_Demo
fi
minutes=${DESAM_QUICK_MINUTES:-4}
[[ $minutes =~ ^[0-9]+([.][0-9]+)?$ ]] || { echo "error: DESAM_QUICK_MINUTES=$minutes: give minutes" >&2; exit 2; }
device=${DESAM_DEVICE:-cpu}
[[ $device == cpu || $device == cuda ]] || { echo "error: DESAM_DEVICE=$device: use cpu or cuda" >&2; exit 2; }

# --- set up, as the README says
cd "$here"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q -e .
bin=$here/.venv/bin

work=${DESAM_WORK:-$here/work}
export nnUNet_raw=$work/nnUNet_raw nnUNet_preprocessed=$work/nnUNet_preprocessed nnUNet_results=$work/nnUNet_results
export nnUNet_n_proc_DA=${nnUNet_n_proc_DA:-1} nnUNet_compile=f
mkdir -p "$nnUNet_raw" "$nnUNet_preprocessed" "$nnUNet_results"
step() { echo; echo "== $* ($((SECONDS / 60))m$((SECONDS % 60))s)"; }

# --- the dataset
if [ -z "$dataset_dir" ]; then
    step "demo dataset"
    "$bin/desam_demo_dataset" -o "$nnUNet_raw" >/dev/null
    dataset_dir=$nnUNet_raw/$name
elif [ ! -e "$nnUNet_raw/$name" ]; then
    ln -s "$dataset_dir" "$nnUNet_raw/$name"
fi

step "plan and preprocess $name"
"$bin/desam_plan_and_preprocess" -d "$name" --verify_dataset_integrity

step "train fold 0 on $device for about $minutes minute(s)"
# epochs of 5 iterations, so that the budget (checked at each epoch's end) is kept closely
"$bin/desam_train" "$name" 0 -device "$device" --time-budget "$minutes" --epochs 1000 --iterations 5 \
    --val-iterations 2

# --- held-back cases: the dataset's imagesTs/labelsTs, else the fold-0 validation cases (linked)
if [ -d "$dataset_dir/imagesTs" ] && [ -d "$dataset_dir/labelsTs" ]; then
    images=$dataset_dir/imagesTs labels=$dataset_dir/labelsTs
    held="its imagesTs/labelsTs"
else
    images=$work/heldback/$name/imagesTs labels=$work/heldback/$name/labelsTs
    held="the fold-0 validation cases, not trained on"
    rm -rf "$work/heldback/$name"
    mkdir -p "$images" "$labels"
    "$bin/python" - "$dataset_dir" "$nnUNet_preprocessed/$name/splits_final.json" "$images" "$labels" <<'EOF'
import json, os, sys
raw, splits, images, labels = sys.argv[1:]
with open(os.path.join(raw, "dataset.json")) as f:
    dataset = json.load(f)
ending, channels = dataset["file_ending"], len(dataset.get("channel_names", dataset.get("modality", {})))
with open(splits) as f:
    cases = json.load(f)[0]["val"]
for case in cases:
    os.symlink(os.path.join(raw, "labelsTr", case + ending), os.path.join(labels, case + ending))
    for c in range(channels):
        image = f"{case}_{c:04d}{ending}"
        os.symlink(os.path.join(raw, "imagesTr", image), os.path.join(images, image))
EOF
fi
predictions=$work/predictions/$name
rm -rf "$predictions"

# the prompts (grid or whole box, IoU threshold, top-k) and postprocessing, chosen from the fold-0
# validation cases that the final validation stored; desam_predict follows the choice
step "choose the inference configuration from the fold-0 validation"
"$bin/desam_find_best_configuration" "$name" -f 0

step "predict the held-back cases ($held)"
tta=(); [ "$device" = cuda ] || tta=(--disable-tta)  # mirroring costs 4x; on a CPU as the final validation does
"$bin/desam_predict" -i "$images" -o "$predictions" -d "$name" -f 0 -device "$device" --preview "${tta[@]}"

step "evaluate"
"$bin/desam_evaluate" -ref "$labels" -pred "$predictions"

echo
echo "Predictions: $predictions/"
echo "Previews:    $predictions/previews/ (prediction solid, ground truth dashed)"
ls "$predictions/previews/" | sed 's/^/  /'
echo "Model:       $nnUNet_results/$name/DeSAMTrainer__DeSAMPlans__desam_2d/fold_0/"
echo "Total time:  $((SECONDS / 60)) min $((SECONDS % 60)) s"
