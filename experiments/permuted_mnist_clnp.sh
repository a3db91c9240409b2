#!/usr/bin/env bash
# Runs CLNP, EWC, SI and single-task training on Permuted MNIST in one setting and prints the docs'
# table beside the CLNP paper's figures, with the free capacity per layer after the last task.
# Usage: bash experiments/permuted_mnist_clnp.sh PATH/TO/mnist OUT_DIR [SUFFIX]
#   SUFFIX "" (default) runs the paper setting (10 tasks, MLP 784-2000-2000, 20 epochs: GPU-sized);
#   SUFFIX "_cpu" runs the CPU-sized configs (5 tasks, MLP 784-400-400, 2 epochs; minutes on 2 cores).
set -euo pipefail
data_dir=${1:?usage: $0 PATH/TO/mnist OUT_DIR [SUFFIX]}
out=${2:?usage: $0 PATH/TO/mnist OUT_DIR [SUFFIX]}
suffix=${3:-}
cd "$(dirname "$0")/.."
for method in single_task ewc si clnp; do
  name="permuted_mnist_${method}${suffix}"
  [ -f "$out/$name/results.json" ] || python experiments/train.py --flagfile="experiments/configs/$name.cfg" \
    --data_dir="$data_dir" --workdir="$out/$name" --noprogress > /dev/null
done
python - "$out" "$suffix" <<'PY'
import json, sys
out, suffix = sys.argv[1:]
paper = {"single_task": "98.48 +- 0.05", "ewc": "97.0", "si": "97.2", "clnp": "98.42 +- 0.04"}
print("| method | average Task-IL accuracy (ours) | paper | Task-IL forgetting | wall time (s) |")
print("|---|---|---|---|---|")
for method, ref in paper.items():
  r = json.load(open(f"{out}/permuted_mnist_{method}{suffix}/results.json"))
  print(f"| {method} | {r['final']['task_il']:.2f} | {ref} | {r['final']['forgetting_task_il']:.2f} | "
        f"{r['wall_time_s']:.0f} |")
r = json.load(open(f"{out}/permuted_mnist_clnp{suffix}/results.json"))
layers = r["clnp"]["tasks"][-1]["layers"]
print()
print("CLNP capacity after the last task: " + ", ".join(
    f"{name}: {l['free']} of {l['used'] + l['free']} units free" for name, l in layers.items()))
if "stopped_early" in r:
  print("CLNP stopped early:", r["stopped_early"])
PY
