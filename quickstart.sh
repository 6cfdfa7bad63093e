#!/usr/bin/env bash
# Quick start on a fresh machine: set up, then run the pipeline on an nnU-Net raw dataset folder.
#   ./quickstart.sh [DATASET_DIR]     (default: ../shared/datasets/Dataset004_Hippocampus)
# What runs today: desam_plan_and_preprocess. Training, prediction and evaluation join as they land.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dataset_dir=$(cd "${1:-$here/../shared/datasets/Dataset004_Hippocampus}" 2>/dev/null && pwd) || {
    echo "error: dataset folder ${1:-../shared/datasets/Dataset004_Hippocampus} not found; give an nnU-Net raw" \
         "dataset folder (DatasetXXX_Name with imagesTr, labelsTr, dataset.json)" >&2; exit 2; }
name=$(basename "$dataset_dir")
[[ $name =~ ^Dataset[0-9]{3}_ ]] || { echo "error: $dataset_dir: folder name must look like DatasetXXX_Name" >&2; exit 2; }

cd "$here"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q -e .

work=${DESAM_WORK:-$here/work}
export nnUNet_raw=$work/nnUNet_raw nnUNet_preprocessed=$work/nnUNet_preprocessed nnUNet_results=$work/nnUNet_results
mkdir -p "$nnUNet_raw" "$nnUNet_preprocessed" "$nnUNet_results"
[ -e "$nnUNet_raw/$name" ] || ln -s "$dataset_dir" "$nnUNet_raw/$name"

.venv/bin/desam_plan_and_preprocess -d "$name" --verify_dataset_integrity
echo
echo "Plans:        $nnUNet_preprocessed/$name/DeSAMPlans.json"
echo "Preprocessed: $nnUNet_preprocessed/$name/DeSAMPlans_desam_2d/"
