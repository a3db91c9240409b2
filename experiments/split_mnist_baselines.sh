#!/usr/bin/env bash
# Runs the DER++ paper's Split MNIST setting (MLP 100-100, 1 epoch per task, batch 10) for DER++, ER and
# ER-ACE at buffer 200 and 500 (ER-ACE with ER's flags), and prints the docs' table (docs/results/sparcl.md). Usage:
#   bash experiments/split_mnist_baselines.sh PATH/TO/mnist OUT_DIR [NUM_SEEDS]   (about 2 minutes a seed set on 2 cores)
# NUM_SEEDS (default 1, or the NUM_SEEDS environment variable) trains seeds 0..NUM_SEEDS-1 in each run
# (train.py --num_seeds, vmapped over seeds); the table then shows mean +- std over those seeds
# (numpy std, ddof 0). With one seed the table is as before.
set -euo pipefail
data_dir=${1:?usage: $0 PATH/TO/mnist OUT_DIR [NUM_SEEDS]}
out=${2:?usage: $0 PATH/TO/mnist OUT_DIR [NUM_SEEDS]}
num_seeds=${3:-${NUM_SEEDS:-1}}
cd "$(dirname "$0")/.."
run() {  # name, config, extra flags...
  local name=$1 cfg=$2; shift 2
  [ -f "$out/$name/results.json" ] || python experiments/train.py --flagfile="experiments/configs/$cfg.cfg" \
    --data_dir="$data_dir" --workdir="$out/$name" --noprogress --num_seeds="$num_seeds" "$@" > /dev/null
}
run derpp_200 split_mnist_derpp
run derpp_500 split_mnist_derpp --buffer_size=500 --alpha=1.0 --beta=0.5
run er_200 split_mnist_er
run er_500 split_mnist_er --buffer_size=500 --lr=0.1
run er_ace_200 split_mnist_er --method=er_ace
run er_ace_500 split_mnist_er --method=er_ace --buffer_size=500 --lr=0.1
python - "$out" <<'PY'
import json, sys
paper = {"derpp_200": (85.61, 98.76), "derpp_500": (91.00, 98.94),
         "er_200": (80.43, 97.86), "er_500": (86.12, 99.04),
         "er_ace_200": None, "er_ace_500": None}  # the DER++ paper has no ER-ACE
names = {"derpp": "DER++", "er": "ER", "er_ace": "ER-ACE"}
runs = {name: json.load(open(f"{sys.argv[1]}/{name}/results.json")) for name in paper}
seeds = {len(r.get("seeds", [r["flags"]["seed"]])) for r in runs.values()}
multi = any("per_seed" in r for r in runs.values())
if multi:
  print(f"Ours: mean +- std over {', '.join(map(str, sorted(seeds)))} seeds (numpy std, ddof 0); "
        "wall time: the whole multi-seed run.")
print("| method | buffer | Class-IL (ours) | Task-IL (ours) | Class-IL (paper) | Task-IL (paper) | wall time (s) |"
      + (" seeds |" if multi else ""))
print("|---|---|---|---|---|---|---|" + ("---|" if multi else ""))
def cell(r, key):
  if "per_seed" not in r:
    return f"{r['final'][key]:.2f}"
  return f"{r['final'][key]:.2f} +- {r['final_std'][key]:.2f}"
for name, published in paper.items():
  r = runs[name]
  method, buf = name.rsplit("_", 1)
  c, t = ("-", "-") if published is None else (f"{v:.2f}" for v in published)
  row = (f"| {names[method]} | {buf} | {cell(r, 'class_il')} | "
         f"{cell(r, 'task_il')} | {c} | {t} | {r['wall_time_s']:.0f} |")
  if multi:
    row += f" {len(r.get('seeds', [r['flags']['seed']]))} |"
  print(row)
PY
