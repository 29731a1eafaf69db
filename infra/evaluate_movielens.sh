#!/usr/bin/env bash
# The issue-4 evaluation on ml-latest-small, from nothing to the metrics table, in a fresh lake:
# ingest (+ overviews, posters), extract text and posters, import the MMTF-14K trailer vectors, fuse,
# train the nightly ranker, evaluate everything on three protocols, publish every user's top 50.
# Needs ../shared/data.
#   bash infra/evaluate_movielens.sh [LAKE]        (default /tmp/modalrank-ml-latest-small)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
data="$root/../shared/data"
if [[ ! -d "$data/ml-latest-small" ]]; then
  echo "evaluate_movielens: $data/ml-latest-small is absent (../shared/data ships only on project machines)" >&2
  exit 2
fi
bash "$root/infra/setup.sh"
source "$root/infra/env.sh"
lake="${1:-/tmp/modalrank-ml-latest-small}"
ds="$(sed -n 's/^run_date *= *//p' "$root/setup.cfg")"
mmtf="$data/mmtf14k"
step() { local name="$1"; shift; local t0=$(date +%s); "$@"; echo "evaluate_movielens: $name took $(( $(date +%s) - t0 )) s"; }

step ingest modalrank ingest --lake "$lake" --ds "$ds" --movielens "$data/ml-latest-small" \
  --overviews "$data/overviews/movies_with_overview.csv" --posters "$data/posters/images"
step extract_text modalrank extract --lake "$lake" --ds "$ds" --modality text
step extract_image modalrank extract --lake "$lake" --ds "$ds" --modality image
step import_mmtf_avf modalrank extract --lake "$lake" --ds "$ds" --modality mmtf_avf \
  --vectors "$mmtf/fused_llm_mmtf_avf_avg.csv"
step import_mmtf_audio modalrank extract --lake "$lake" --ds "$ds" --modality mmtf_audio \
  --vectors "$mmtf/fused_llm_mmtf_audio_IVec_splitItem_fold_1_gmm_128_tvDim_100.csv"
step fuse modalrank fuse --lake "$lake" --ds "$ds"
step train modalrank train --lake "$lake" --ds "$ds"
step evaluate modalrank evaluate --lake "$lake" --ds "$ds" --dataset ml-latest-small
step publish modalrank publish --lake "$lake" --ds "$ds"
modalrank latest --lake "$lake" --users 2 --limit 5
