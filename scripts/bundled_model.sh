#!/usr/bin/env bash
# The bundled model (pretrained/pet_tiny) made again, then scored as the README's table is:
# 256 generated template PET/MRI pairs of 128 px, the tiny config on 64 px crops for 1536 steps,
# exported, then 12 held-out pairs (seed 200) fused at 12 steps and scored next to the rules.
#     scripts/bundled_model.sh OUT        (about 10 minutes on 2 idle CPU cores)
set -euo pipefail
out=${1:?usage: scripts/bundled_model.sh OUT}
difffccf=${DIFFFCCF:-difffccf}

$difffccf make-data --task pet --num 256 --size 128 --seed 100 --out "$out/train_data"
$difffccf train --config configs/tiny.py --workdir "$out/run" \
    --config.data.root="$out/train_data" --config.data.image_size=128 \
    --config.data.crop_size=64 --config.train.steps_per_epoch=64 --config.train.epochs=24 \
    --config.train.checkpoint_every_epochs=2
$difffccf export --checkpoint "$out/run/checkpoints" --out "$out/model"

$difffccf make-data --task pet --num 12 --size 128 --seed 200 --out "$out/test_data"
$difffccf fuse --checkpoint "$out/model" --task pet --data "$out/test_data" --out "$out/fused" \
    --steps 12
$difffccf evaluate --task pet --data "$out/test_data" --fused "bundled=$out/fused" --baselines \
    --out "$out/tables"
