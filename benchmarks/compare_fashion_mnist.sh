#!/bin/bash
# The runs of benchmarks/compare_fashion_mnist.md. `glann compare configs/compare_fashion_mnist.yaml`
# trains exactly these runs itself; they were trained with this loop so that training could start
# before `glann compare` existed. `glann compare` then found them finished, evaluated them and wrote
# the report. One thread: on a CPU shared with other jobs, OpenMP's spin-waiting makes 2 threads slower.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
for seed in 0 1; do
  for m in "glann configs/fashion_mnist.yaml glo.epochs=4 imle.epochs=10" \
           "dcgan configs/gan_fashion_mnist.yaml gan.epochs=1000" \
           "dcgan_pac2_mbstd configs/gan_pacgan_fashion_mnist.yaml gan.epochs=1000" \
           "wgan_gp configs/gan_wgangp_fashion_mnist.yaml gan.epochs=1000"; do
    set -- $m; name=$1; cfg=$2; shift 2
    start=$(date +%s.%N)
    .venv/bin/glann train $cfg data.limit=10000 sample_every=1 "$@" seed=$seed name=${name}_s$seed \
      out_dir=runs/compare_fashion_mnist gan.max_seconds=180
    end=$(date +%s.%N)
    echo "{\"train_seconds\": $(echo "$end - $start" | bc)}" > runs/compare_fashion_mnist/${name}_s$seed/timing.json
  done
done
.venv/bin/glann compare configs/compare_fashion_mnist.yaml
