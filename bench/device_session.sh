#!/usr/bin/env bash
# The GPU figures the open issues still need, as prepared calls of under 10 minutes each for
# a session that is lent a device machine (DEVELOPERS.md; one `run` per part, most needed first):
#   part 1, issues 12 and 13: ResNet-18 cold in float32 (the default) and bfloat16, warm (the
#           cache), GoogLeNet's 10 epochs (He kernels, the chapter's default) under the default
#           dispatch, and 2 epochs in loops of 26 steps (one program), to see whether a loop
#           itself compiles slowly on a GPU.
#   part 2, issues 15 and 13: the modern recipe, 3 seeds, each cold; NiN's 10 epochs.
#   part 3, issue 12: `make bench`'s ResNet-18 rows (d2lite, a pure step, PyTorch on CUDA).
#   parts 4 and 5, issue 12 (items 2 and 6): the other chapters' 10 epochs, each cold, for the
#           compile figure of every chapter and README's results table.
#   part 6, issue 13: NiN's 10 epochs with the book's PyTorch initialisation (--init xavier) and
#           with He's, to compare with part 2's run of Flax's, which once diverged in epoch 7;
#           GoogLeNet's 10 epochs with the book's JAX initialisation (--init lecun), to compare
#           with part 1's He.
# Every run starts from an empty compilation cache except the warm one, which reuses the
# cold run's. Results: $OUT/partN.log (wall times, last lines of each run), $OUT/REPORT.md
# (`make report` of these runs: accuracy, speed, first epoch over a steady one) and
# $OUT/runs-partN.tar.gz (the run directories without checkpoints, the bench JSON).
#
#   bash bench/device_session.sh 1|2|3|4|5|6
# On the device: PYTHONPATH is set here; Fashion-MNIST comes from ./.data when it exists.
# A rehearsal on a CPU, in minutes: D2LITE_FAST_DEV_RUN=2 BENCH_STEPS=2 PYTHON=.venv/bin/python
set -u
part=${1:-}
if ! [[ "$part" =~ ^[1-6]$ ]]; then
    echo "usage: bash bench/device_session.sh 1|2|3|4|5|6 (see the comment at its top)" >&2
    exit 2
fi
python=${PYTHON:-python3}
out=${OUT:-runs/device-out}
root=runs/device-$part
export PYTHONPATH=. PYTHONUNBUFFERED=1
if [ -d .data ]; then export D2LITE_DATA=$PWD/.data; fi
rm -rf "$root" && mkdir -p "$root" "$out"
log=$out/part$part.log
caches=$(mktemp -d)
: >"$log"

# run NAME SECONDS CACHE MODULE [FLAGS...]: one process under a time limit; its wall time,
# from process start to exit, and its last lines go to the log.
run() {
    local name=$1 limit=$2 cache=$caches/$3 module=$4 start status
    shift 4
    mkdir -p "$cache"
    start=$(date +%s.%N)
    XDG_CACHE_HOME=$cache timeout "$limit" "$python" -m "$module" "$@" >"$root/$name.out" 2>&1
    status=$?
    printf '%s: %.1f s wall, exit %s (%s %s)\n' "$name" "$(echo "$(date +%s.%N) - $start" | bc)" \
        "$status" "$module" "$*" | tee -a "$log"
    grep -E '^epoch [0-9]+/|test accuracy|error|Error' "$root/$name.out" | tail -n 4 | sed 's/^/    /' >>"$log"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >>"$log" 2>&1
"$python" -c "import jax; print('jax', jax.__version__, jax.devices())" >>"$log" 2>&1
if [ "$part" = 1 ]; then
    run resnet-fp32-cold 150 resnet chapters.resnet --out-dir "$root/resnet-fp32-cold"
    run resnet-fp32-warm 150 resnet chapters.resnet --out-dir "$root/resnet-fp32-warm"
    run resnet-bf16-cold 150 resnet-bf16 chapters.resnet --precision bfloat16 --out-dir "$root/resnet-bf16-cold"
    run googlenet-auto 200 googlenet chapters.googlenet --out-dir "$root/googlenet-auto"
    run googlenet-loops 100 googlenet-loops chapters.googlenet --epochs 2 --steps-per-dispatch 26 \
        --out-dir "$root/googlenet-loops"
elif [ "$part" = 3 ]; then
    run bench-resnet18 400 bench bench.bench --models resnet18 --steps "${BENCH_STEPS:-30}" \
        --json "$root/bench-resnet18.json"
elif [ "$part" = 4 ]; then
    for chapter in alexnet vgg; do
        run "$chapter" 150 "$chapter" "chapters.$chapter" --out-dir "$root/$chapter"
    done
    for chapter in lenet batchnorm; do
        run "$chapter" 60 "$chapter" "chapters.$chapter" --out-dir "$root/$chapter"
    done
elif [ "$part" = 6 ]; then
    run nin-xavier 200 nin chapters.nin --init xavier --out-dir "$root/nin-xavier"
    run nin-he 200 nin-he chapters.nin --init he --out-dir "$root/nin-he"
    run googlenet-lecun 150 googlenet chapters.googlenet --init lecun --out-dir "$root/googlenet-lecun"
elif [ "$part" = 5 ]; then
    for chapter in resnext densenet regnet resnet_nnx; do
        run "$chapter" 120 "$chapter" "chapters.$chapter" --out-dir "$root/$chapter"
    done
else
    for seed in 0 1 2; do
        run "modern-seed$seed" 120 "modern$seed" chapters.modern_recipe --precision bfloat16 --seed $seed \
            --out-dir "$root/modern-seed$seed"
    done
    run nin 200 nin chapters.nin --out-dir "$root/nin"
fi
"$python" -m d2lite.runs.report --runs "$root" --out "$out/REPORT.md" >/dev/null 2>>"$log"
tar czf "$out/runs-part$part.tar.gz" --exclude=checkpoints "$root"
rm -rf "$caches"
echo "done: $log, $out/REPORT.md, $out/runs-part$part.tar.gz" | tee -a "$log"
