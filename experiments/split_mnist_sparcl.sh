#!/usr/bin/env bash
# Runs the CPU-sized SparCL comparison on real Split MNIST and prints the docs' tables:
# dense DER++, SparCL-DER++ and its ablations, and the SNIP / RigL sparse-training comparisons,
# all in one setting (MLP 784-400-400, buffer 200, 5 epochs per task, batch 32).
# Usage: bash experiments/split_mnist_sparcl.sh PATH/TO/mnist OUT_DIR [NUM_SEEDS [TRAIN.PY FLAGS...]]
#   (about 15 minutes a seed on 2 cores)
# NUM_SEEDS (default 1, or the NUM_SEEDS environment variable) trains seeds --seed..--seed+NUM_SEEDS-1 in
# each run (train.py --num_seeds); the tables then show mean +- std over those seeds (numpy std, ddof 0).
# Any further arguments go to every run, after its config, e.g. the official SparCL code's loss setting
# and shuffled class orders from seed 1:
#   bash experiments/split_mnist_sparcl.sh PATH/TO/mnist OUT 3 --current_task_logit_mask --noreplay_first_task
#   bash experiments/split_mnist_sparcl.sh PATH/TO/mnist OUT 3 --shuffle_classes --seed=1
# RUNS (environment, default all seven) picks a subset of the configs below; the tables then show
# only the runs that finished.
set -euo pipefail
usage="usage: $0 PATH/TO/mnist OUT_DIR [NUM_SEEDS [TRAIN.PY FLAGS...]]"
data_dir=${1:?$usage}
out=${2:?$usage}
num_seeds=${3:-${NUM_SEEDS:-1}}
shift $(( $# < 3 ? $# : 3 ))
cd "$(dirname "$0")/.."
mkdir -p "$out"
runs=${RUNS:-"split_mnist_derpp_cpu split_mnist_sparcl_derpp split_mnist_sparcl_tdm_only split_mnist_sparcl_tdm_dgm
      split_mnist_sparcl_tdm_ddr split_mnist_snip_derpp split_mnist_rigl_derpp"}
for name in $runs; do
  if [ ! -f "$out/$name/results.json" ]; then
    python experiments/train.py --flagfile="experiments/configs/$name.cfg" --data_dir="$data_dir" \
      --workdir="$out/$name" --noprogress --num_seeds="$num_seeds" "$@" > "$out.$name.log" 2>&1 \
      || { cat "$out.$name.log"; exit 1; }
  fi
done
done_runs() { for name; do [ -f "$out/$name/results.json" ] && echo "$out/$name"; done; true; }
base=$out/split_mnist_derpp_cpu
[ -f "$base/results.json" ] || { echo "no dense DER++ run in $out: no tables"; exit 0; }
echo "SparCL-DER++ against DER++:"
python experiments/compare.py $(done_runs split_mnist_derpp_cpu split_mnist_sparcl_derpp \
  split_mnist_snip_derpp split_mnist_rigl_derpp)
ablation=$(done_runs split_mnist_sparcl_tdm_only split_mnist_sparcl_tdm_dgm split_mnist_sparcl_tdm_ddr \
  split_mnist_sparcl_derpp)
if [ -n "$ablation" ]; then
  echo
  echo "Ablation:"
  python experiments/compare.py "$base" $ablation  # against dense DER++, the first row
fi
