#!/usr/bin/env bash
# Runs the DER++ paper's Split MNIST setting (MLP 100-100, 1 epoch per task, batch 10) for DER++, ER and
# ER-ACE at buffer 200 and 500 (ER-ACE with ER's flags), and prints the README's table. Usage:
#   bash experiments/split_mnist_baselines.sh PATH/TO/mnist OUT_DIR   (about 2 minutes on 2 cores)
set -euo pipefail
data_dir=${1:?usage: $0 PATH/TO/mnist OUT_DIR}
out=${2:?usage: $0 PATH/TO/mnist OUT_DIR}
cd "$(dirname "$0")/.."
run() {  # name, config, extra flags...
  local name=$1 cfg=$2; shift 2
  [ -f "$out/$name/results.json" ] || python experiments/train.py --flagfile="experiments/configs/$cfg.cfg" \
    --data_dir="$data_dir" --workdir="$out/$name" --noprogress "$@" > /dev/null
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
print("| method | buffer | Class-IL (ours) | Task-IL (ours) | Class-IL (paper) | Task-IL (paper) | wall time (s) |")
print("|---|---|---|---|---|---|---|")
for name, published in paper.items():
  r = json.load(open(f"{sys.argv[1]}/{name}/results.json"))
  method, buf = name.rsplit("_", 1)
  c, t = ("-", "-") if published is None else (f"{v:.2f}" for v in published)
  print(f"| {names[method]} | {buf} | {r['final']['class_il']:.2f} | "
        f"{r['final']['task_il']:.2f} | {c} | {t} | {r['wall_time_s']:.0f} |")
PY
