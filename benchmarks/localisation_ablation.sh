#!/usr/bin/env bash
# The paper's Table 2 ablation (w/o RCM & PGM, w/o RCM, WAL-Net) on phantoms where the class lives
# only in the plaque (docs/benchmarks.md, "Does the plaque's location matter?"): for each
# plaque-size setting, an 800-image phantom at 96² with three class-like distractors per image
# (walnet phantom --plaque-area, --distractors), then `walnet experiment --table table2` with a
# ResNet-18 encoder for 8 epochs, the RCM active in the last 4, three seeds. About 25 minutes per
# setting on a 2-core CPU. EPOCHS and WARMUP (the epochs with the RCM off) change the training
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
declare -A AREA=([small]=0.03,0.06 [medium]=0.08,0.15 [large]=0.2,0.3)
for setting in ${SETTINGS[*]}; do
  area=${AREA[$setting]:?unknown setting $setting (small, medium, large)}
  "$WALNET" phantom --output "$OUT/$setting/phantom" --n 800 --size 96 --seed 0 --plaque-area "$area" \
    --distractors 3
  "$WALNET" experiment --table table2 --seeds 0,1,2 --csv "$OUT/$setting/phantom/labels.csv" \
    --output "$OUT/$setting/t2" --backbone resnet18 --attention-channels 64 --size 96 -b 16 --lr 1e-3 \
    --epochs "$EPOCHS" --rcm-warmup "$WARMUP" --device cpu --no-figures
done
