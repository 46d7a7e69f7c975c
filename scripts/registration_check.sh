#!/usr/bin/env bash
# The README's registration tables: for PET and SPECT, train on generated pairs with a 2-4 px
# head motion, then report the error before and after and the fusion metrics both ways.
#     scripts/registration_check.sh OUT [extra `difffccf registration` flags, e.g. --minutes 2]
# (about 19 minutes per task on 2 idle CPU cores with the default 12-minute training budget)
set -euo pipefail
out=${1:?usage: scripts/registration_check.sh OUT [flags]}
shift
difffccf=${DIFFFCCF:-difffccf}

for task in pet spect; do
    $difffccf registration --task "$task" --out "$out/$task" "$@"
done
