#!/usr/bin/env bash
# The paper's Table 2 ablation (w/o RCM & PGM, w/o RCM, WAL-Net) on phantoms where the class lives
# only in the plaque (docs/benchmarks.md, "Does the plaque's location matter?"): for each
# plaque-size setting, an 800-image phantom at 96² with three class-like distractors per image
# (walnet phantom --plaque-area, --distractors), then `walnet experiment --table table2` with a
# ResNet-18 encoder for 8 epochs, the RCM active in the last 4, three seeds. About 25 minutes per
# setting on a 2-core CPU. A control follows: the plain classifier (walnet_no_pgm) on crops to the
# plaque's true box (labels_box.csv: the phantom's plaque box as the ROI box columns that the CSV
# reader crops to), the same seeds and test images: what knowing where the plaque is gives, a few
# minutes per setting. EPOCHS and WARMUP (the epochs with the RCM off) change the training
# length (default 8 and 4). Then benchmarks/localisation_report.py reads the runs.
#   usage: [EPOCHS=16 WARMUP=8] benchmarks/localisation_ablation.sh OUT [SETTING ...]
#   (settings: small medium large; default all three)
# Finished runs are reused, so the same command continues an interrupted ablation.
set -euo pipefail
OUT=${1:?usage: $0 OUT [small|medium|large ...]}
shift
SETTINGS=("${@:-small medium large}")
WALNET=${WALNET:-walnet}
EPOCHS=${EPOCHS:-8}
WARMUP=${WARMUP:-4}
PYTHON=${PYTHON:-python3}
SIZE=96
TRAIN=(--backbone resnet18 --attention-channels 64 --size "$SIZE" -b 16 --lr 1e-3 --epochs "$EPOCHS"
       --rcm-warmup "$WARMUP" --device cpu --no-figures)
declare -A AREA=([small]=0.03,0.06 [medium]=0.08,0.15 [large]=0.2,0.3)
for setting in ${SETTINGS[*]}; do
  area=${AREA[$setting]:?unknown setting $setting (small, medium, large)}
  "$WALNET" phantom --output "$OUT/$setting/phantom" --n 800 --size "$SIZE" --seed 0 --plaque-area "$area" \
    --distractors 3
  "$WALNET" experiment --table table2 --seeds 0,1,2 --csv "$OUT/$setting/phantom/labels.csv" \
    --output "$OUT/$setting/t2" "${TRAIN[@]}"
  "$PYTHON" - "$OUT/$setting/phantom" "$SIZE" <<'PY'
import csv, sys
folder, last = sys.argv[1], int(sys.argv[2]) - 1
with open(f"{folder}/labels.csv", newline="") as f:
    rows = list(csv.DictReader(f))
with open(f"{folder}/labels_box.csv", "w", newline="") as f:
    out = csv.writer(f, lineterminator="\n")
    out.writerow(["path", "label", "patient_id", "mask_path", "y1", "x1", "y2", "x2"])
    for r in rows:  # the true box with ROI margins: half its height above and below, a quarter of its width aside
        y1, x1, y2, x2 = (int(r[f"plaque_{c}"]) for c in ("y1", "x1", "y2", "x2"))
        dy, dx = max((y2 - y1 + 1) // 2, 4), max((x2 - x1 + 1) // 4, 4)
        out.writerow([r["path"], r["label"], r["patient_id"], r["mask_path"],
                      max(y1 - dy, 0), max(x1 - dx, 0), min(y2 + dy, last), min(x2 + dx, last)])
PY
  "$WALNET" experiment --models walnet_no_pgm --seeds 0,1,2 --csv "$OUT/$setting/phantom/labels_box.csv" \
    --output "$OUT/$setting/oracle" "${TRAIN[@]}"
done
