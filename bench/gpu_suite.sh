#!/usr/bin/env bash
# The accelerator suite (bench/gpu_suite.py): train steps, samplers, likelihood and Inception
# on one GPU, in at most 6 minutes, ending with one markdown table.
#
#   bash bench/gpu_suite.sh [OUTPUT.md]        # default bench_results/gpu_suite.md ($OUT if set)
#   SUITE_SMOKE=1 bash bench/gpu_suite.sh      # tiny sizes, to check the suite on a CPU
#
# It uses the project's own install: .venv/ if there is one, else the python3 on PATH, which
# must have sde-jax installed with a CUDA jax (pip install -e . plus jax[cuda12]); nothing is
# downloaded. The Python suite keeps a budget of SUITE_BUDGET_S seconds (330 by default) and
# skips what would not fit; the outer timeout (360 s) is the backstop.
set -euo pipefail
cd "$(dirname "$0")/.."
python=python3
[[ -x .venv/bin/python ]] && python=.venv/bin/python
out="${1:-${OUT:+$OUT/gpu_suite.md}}"
out="${out:-bench_results/gpu_suite.md}"
budget="${SUITE_BUDGET_S:-330}"
smoke=()
if [[ -n "${SUITE_SMOKE:-}" ]]; then
  smoke=(--smoke)
else
  if ! "$python" -c 'import jax, sys; sys.exit(jax.devices()[0].platform != "gpu")' 2>/dev/null; then
    echo "gpu_suite: $python's jax sees no GPU ($("$python" -c 'import jax; print(jax.devices())' 2>&1 | tail -1));" \
         "install a CUDA jax, or set SUITE_SMOKE=1 for a CPU check." >&2
    exit 2
  fi
fi
exec timeout --signal=TERM --kill-after=10 360 \
  "$python" bench/gpu_suite.py --budget_s "$budget" --out "$out" "${smoke[@]}"
