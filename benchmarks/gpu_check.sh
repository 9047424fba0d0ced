#!/usr/bin/env bash
# The one-shot GPU check (benchmarks/gpu_check.py says what it measures: the runner's own step in
# float32 and bfloat16 for F = 1, 8, 26 with a profile of two steps, and a whole in-memory LOSO);
# prints one JSON line on stdout, within 8 minutes on one GPU.
#
#   bash benchmarks/gpu_check.sh            # from the repository root, on a machine with a GPU
#   bash benchmarks/gpu_check.sh --tiny     # the same code at tiny sizes, on CPU, in under 2 minutes
#
# TF-free: the GPU image this is made for has JAX (CUDA), flax, optax, orbax, scipy, OpenCV,
# matplotlib and tensorboard but no tensorflow, tensorflow-datasets, clu or ml-collections. The
# check builds its data in memory (no TFDS), the runner writes its TensorBoard scalars without clu
# or TensorFlow (mpt_jax/console.py), and the check hides those three packages even where they are
# installed, to prove it. ml-collections (pure Python, 77 kB; needs absl-py and PyYAML, both on
# that image) is the one package to bring: where it is not importable, this script installs the
# wheel it finds in .whl/ (git-ignored) into a temporary folder. Fetch that wheel once on a machine
# with pip (`make gpu-wheels`), then pass the folder along, e.g. with the device tool:
#   run(command='bash benchmarks/gpu_check.sh', carry=['.whl'], timeout_s=600)
#
# Environment: PYTHON (default python3), GPU_CHECK_SITE (where the wheel is installed, default a
# temporary folder). Every argument is passed on to benchmarks/gpu_check.py (e.g.
# --profile_md=$OUT/profile.md writes the kernel tables as markdown).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}"  # the project venv (make venv) if there is one
export PYTHONUNBUFFERED=1
if ! "$PY" -c 'import ml_collections' 2>/dev/null; then
  shopt -s nullglob
  wheels=(.whl/ml_collections-*.whl)
  if [ ${#wheels[@]} -eq 0 ]; then
    echo "error: ml_collections is not importable by $PY and no .whl/ml_collections-*.whl is" \
         "here; run 'make gpu-wheels' on a machine with pip and carry .whl along" >&2
    exit 2
  fi
  site="${GPU_CHECK_SITE:-$(mktemp -d /tmp/mpt_jax_site.XXXXXX)}"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" "${wheels[@]}" >&2
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
exec "$PY" -m benchmarks.gpu_check "$@"
