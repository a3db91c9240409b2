#!/usr/bin/env bash
# Runs the CPU-sized SparCL comparison on real Split MNIST and prints the README's tables:
# dense DER++, SparCL-DER++ and its ablations, and the SNIP / RigL sparse-training comparisons,
# all in one setting (MLP 784-400-400, buffer 200, 5 epochs per task, batch 32).
# Usage: bash experiments/split_mnist_sparcl.sh PATH/TO/mnist OUT_DIR   (about 15 minutes on 2 cores)
set -euo pipefail
data_dir=${1:?usage: $0 PATH/TO/mnist OUT_DIR}
out=${2:?usage: $0 PATH/TO/mnist OUT_DIR}
cd "$(dirname "$0")/.."
runs="split_mnist_derpp_cpu split_mnist_sparcl_derpp split_mnist_sparcl_tdm_only split_mnist_sparcl_tdm_dgm
      split_mnist_sparcl_tdm_ddr split_mnist_snip_derpp split_mnist_rigl_derpp"
for name in $runs; do
  if [ ! -f "$out/$name/results.json" ]; then
    python experiments/train.py --flagfile="experiments/configs/$name.cfg" --data_dir="$data_dir" \
      --workdir="$out/$name" --noprogress > "$out.$name.log" 2>&1 || { cat "$out.$name.log"; exit 1; }
  fi
done
echo "SparCL-DER++ against DER++:"
python experiments/table.py "$out/split_mnist_derpp_cpu" "$out/split_mnist_sparcl_derpp" \
  "$out/split_mnist_snip_derpp" "$out/split_mnist_rigl_derpp"
echo
echo "Ablation:"
python experiments/table.py --baseline="$out/split_mnist_derpp_cpu" "$out/split_mnist_sparcl_tdm_only" \
  "$out/split_mnist_sparcl_tdm_dgm" "$out/split_mnist_sparcl_tdm_ddr" "$out/split_mnist_sparcl_derpp"
