#!/usr/bin/env bash
# One prepared call on the lent GPU machine (the `device` tool), sized to a task's 15 minutes of
# device time: set up, run one plan within a time budget, pack what it made into $OUT.
#
#   here, once per checkout (.carry/ is ignored through .git/info/exclude):
#     mkdir -p .carry && cp -r ../shared/wheels ../shared/data/cifar10-jpg.tar.gz .carry/
#     grep -qx '/.carry/' .git/info/exclude || echo /.carry/ >> .git/info/exclude
#   device run:  command "bash scripts/gpu_session.sh speed", carry [".carry"], timeout_s 570
#   baselines with a float run made elsewhere (outputs/ is ignored, so carry it):
#     cp -r <the finished 60-epoch float run folder> outputs/float/resnet20_cifar10
#     command "METHODS=lsq,ste bash scripts/gpu_session.sh baselines",
#     carry [".carry", "outputs/float/resnet20_cifar10"], timeout_s 570
#   issue 39's distillation rows (lsq and ste W2A2 from that float net, with and without it as the teacher;
#   seed 0 first, 4 runs, then SEEDS=1,2 in a later call):
#     command "METHODS=lsq,ste SEEDS=0 DISTILL=true SWEEP_EXTRA=bits=2 bash scripts/gpu_session.sh baselines"
#
# Plans (each ends its work BUDGET_S seconds after it starts, default 480, then packs):
#   speed      the CUDA-only tests (fused fake-quantize kernel, on-device batches, XNOR Triton
#              kernel); every method at W2A2 eager and compiled (the compiled rows first compiled 8 at once,
#              bench --precompile, so that the timed rows compile from inductor's caches); fp / ste W2A2 and
#              W4A4 compiled with whole epochs; every method eager with trainer.recompute_quant; fp / ste
#              W2A2 compiled with CUDA graphs (reduce-overhead). Each bench writes its JSON after every row:
#              a step cut short keeps its rows
#   baselines  the float ResNet-20 (60 epochs; skipped when outputs/float/resnet20_cifar10 holds a
#              finished run: carry that folder, last.ckpt and summary.json) and, once it is written, the
#              experiment=baselines_cifar10 sweep (METHODS x 2, 3, 4 bits x SEEDS, N_JOBS runs at once on
#              the GPU). Runs cut by the budget stop as a Ctrl-C would (mid-epoch checkpoint) and show as
#              unfinished in the report. The whole table may not fit one session even with the float run
#              carried (docs/baselines.md has the rates measured): METHODS=lsq,ste and then dorefa,pact
#              split it over two.
#              The runs compile (COMPILE=true): processes sharing a GPU take turns on it, so what counts is
#              the GPU time of a step, and an eager step of ResNet-20 at batch 128 is 700-1150 small
#              kernels where a compiled one fuses the element-wise work (not measured on a GPU yet;
#              COMPILE=false runs them eager). Each run's compile workers get a share of the cores
# Knobs (environment): BUDGET_S, METHODS (baselines: ste,lsq,dorefa,pact), SEEDS (baselines: 0),
# N_JOBS (baselines: 12), COMPILE (baselines: true), DISTILL (baselines: false; true runs every row of the
# sweep twice, without and with trainer.distill.teacher=<the float run>), SWEEP_EXTRA (arguments added to the
# baselines sweep only, not to the float run: e.g. bits=2 for one width; not glob-expanded),
# DEVICE (cuda), DATA (/tmp/data), TRAIN_EXTRA / BENCH_EXTRA (arguments added to every qnnrun train /
# bench command; a dry run on a CPU: DEVICE=cpu TRAIN_EXTRA="dataset=digits model=mlp trainer.epochs=1"
# BENCH_EXTRA="--batch 8 --steps 1 --warmup 1 --epoch-samples 64 --methods fp ste").
# tests/scripts/test_scripts.py dry-runs the baselines plan that way (-m slow).
#
# Comes back: $OUT/<plan>.log (all output), $OUT/<plan>.tar.gz (bench JSON, or the runs' summary.json,
# train.log, TensorBoard events and report.md / report.csv, no checkpoints) and, for baselines, the float
# checkpoint $OUT/float_resnet20_cifar10.ckpt. At most 8 files come back from $OUT.
set -uo pipefail
PLAN=${1:?usage: bash scripts/gpu_session.sh speed|baselines}
case $PLAN in speed|baselines) ;; *) echo "unknown plan '$PLAN': speed, baselines" >&2; exit 2 ;; esac
OUT=${OUT:?OUT is the folder whose files come back}
START=$SECONDS
BUDGET_S=${BUDGET_S:-480}
DEVICE=${DEVICE:-cuda}
DATA=${DATA:-/tmp/data}
TRAIN_EXTRA=${TRAIN_EXTRA:-}
BENCH_EXTRA=${BENCH_EXTRA:-}
WORK=$(mktemp -d /tmp/gpu_session.XXXX)
LOG=$OUT/$PLAN.log
exec > >(tee "$LOG") 2>&1
TEE=$!
export PYTHONUNBUFFERED=1

# Seconds left of the budget, at least 1 (timeout 0 would mean no limit).
left() { local s=$((BUDGET_S - (SECONDS - START))); echo $((s > 1 ? s : 1)); }
step() { echo; echo "=== $(date -u +%H:%M:%S) +$((SECONDS - START))s: $*"; }

step "setup"
if ! python3 -c "import hydra" 2>/dev/null; then
    pip install -q --no-index --no-deps --target /tmp/site .carry/wheels/*.whl || exit 1
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
python3 - <<'EOF'
import torch, torchvision
name = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, {name}")
EOF
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null

case $PLAN in
speed)
    BENCH="python3 scripts/bench_throughput.py --device $DEVICE --batch 512 --no-brevitas"
    step "CUDA-only tests"
    # -o addopts: the device has no pytest-xdist (pyproject's -n auto); three files need no workers
    timeout "$(left)" python3 -m pytest -q -p no:cacheprovider -o addopts="-ra -m 'not slow'" -k "cuda or gpu" \
        tests/quant/test_quant.py tests/data/test_data.py tests/kernels/test_xnor.py
    step "every method at W2A2, eager and compiled (compiled rows precompiled 8 at once)"
    timeout "$(left)" $BENCH --bits 2 --compile --precompile 8 --steps 50 --warmup 5 --json "$WORK/methods.json" \
        $BENCH_EXTRA
    step "fp / ste W2A2 and W4A4 compiled, whole epochs"
    timeout "$(left)" $BENCH --methods fp ste --bits 2 4 --compile --precompile 4 --epoch --steps 100 --warmup 5 \
        --json "$WORK/epochs.json" $BENCH_EXTRA
    step "every method eager at W2A2 with trainer.recompute_quant"
    timeout "$(left)" $BENCH --bits 2 --recompute --steps 50 --warmup 10 --json "$WORK/recompute.json" $BENCH_EXTRA
    step "fp / ste W2A2 compiled with CUDA graphs"
    timeout "$(left)" $BENCH --methods fp ste --bits 2 --compile --compile-mode reduce-overhead --steps 100 \
        --warmup 5 --json "$WORK/cudagraphs.json" $BENCH_EXTRA
    ;;
baselines)
    METHODS=${METHODS:-ste,lsq,dorefa,pact}
    SEEDS=${SEEDS:-0}
    N_JOBS=${N_JOBS:-12}
    COMPILE=${COMPILE:-true}
    DISTILL=${DISTILL:-false}
    SWEEP_EXTRA=${SWEEP_EXTRA:-}
    case $DISTILL in true|false) ;; *) echo "DISTILL='$DISTILL': true, false" >&2; exit 2 ;; esac
    mkdir -p "$DATA" && tar xzf .carry/cifar10-jpg.tar.gz -C "$DATA" || exit 1
    COMMON="paths.data_dir=$DATA trainer.device=$DEVICE trainer.compile=$COMPILE dataset.drop_last=$COMPILE trainer.progress=false"
    FLOAT=outputs/float/resnet20_cifar10
    if [ -f $FLOAT/summary.json ]; then
        step "float ResNet-20: $FLOAT is there, not trained again"
    else
        step "float ResNet-20, 60 epochs -> $FLOAT"
        timeout "$(left)" python3 -m qnnrun.cli train method=fp model=resnet20 dataset=cifar10 trainer.epochs=60 \
            $COMMON hydra.run.dir=$FLOAT $TRAIN_EXTRA
    fi
    if [ -f $FLOAT/summary.json ]; then
        [ "$DISTILL" = true ] && SWEEP_EXTRA="$SWEEP_EXTRA trainer.distill.teacher=null,'$PWD/$FLOAT'"
        cp $FLOAT/last.ckpt "$OUT/float_resnet20_cifar10.ckpt"
        step "experiment=baselines_cifar10 method=$METHODS seed=$SEEDS $SWEEP_EXTRA, $N_JOBS at once"
        # N_JOBS runs compile at once: a share of the cores each, not a pool of compile workers per core each.
        set -f  # the overrides' words are not file patterns ([2,3], *)
        TORCHINDUCTOR_COMPILE_THREADS=$(( $(nproc) / N_JOBS > 0 ? $(nproc) / N_JOBS : 1 )) \
        timeout "$(left)" python3 -m qnnrun.cli train experiment=baselines_cifar10 method=$METHODS seed=$SEEDS \
            hydra/launcher=local hydra.launcher.n_jobs=$N_JOBS $COMMON hydra.sweep.dir="$WORK/baselines" $TRAIN_EXTRA $SWEEP_EXTRA
        set +f
        python3 -m qnnrun.cli report "$WORK/baselines"
    fi
    cp -r $FLOAT "$WORK/float"
    ;;
esac

step "pack"
tar czf "$OUT/$PLAN.tar.gz" -C "$WORK" --exclude='*.ckpt' --exclude='*.pt' .
ls -la "$OUT"
exec >&- 2>&-
wait "$TEE"  # the log is whole before the device collects $OUT
