#!/usr/bin/env bash
# Issue 3's GPU figures in one call, for a lent GPU machine whose python3 already
# has torch and transformers (nothing is installed; our packages come from src/).
#
#   tools/bench/gpu_check.sh DATASET OUT_DIR
#
# DATASET: a pretraining dataset from `hatch run train:prepare pretrain` with a
# 16384-token vocabulary (the 56M shape's), e.g.
#   hatch run train:prepare pretrain --tokenizer ../shared/data/tokenizer_16384_v2.json \
#       --out_dir runs/data/psycho_16384 ../shared/data/pretrain_psycho.txt
# OUT_DIR receives gpu_check.log (everything printed), the two train_speed JSON
# records, and the pretraining run's log.jsonl and report.md.
#
# Stages, each under its own time limit so that a slow one still leaves the others'
# results: the GPU and the matmul rates of the model's own shapes; the gradients
# against float64 (grad_check.py); train_speed on the 56M shape in bfloat16, eager,
# then with both models compiled; a real pretraining run of configs/gpu_56m.json
# (compiled) for a fixed time. One more stage, sweep, runs only when asked for: our
# model compiled (the peer eager) in each of the variants of SWEEP, LOSS:MODE:BATCH
# (LOSS blocked or plain, MODE torch.compile's mode), a train_speed run of 3 rounds each,
# about 100 s apiece: where the GPU time goes, not a figure for the issue.
# Two more run only when asked for: parts (gpu_parts.py: the time of each part of a
# step, and the profiler's breakdown of an eager and a compiled step, 1-2 minutes) and
# trainer_sweep: the trainer itself (`pretrain` of configs/gpu_56m.json, no validation,
# no checkpoint but the last) for TRAIN_SWEEP_SECONDS in each variant of TRAIN_SWEEP,
# LOSS:MODE:BATCH:ATTENTION (system.loss, system.compile_mode, data.batch_size,
# system.attention_backend), then a table of the median tokens/s and MFU of each run's
# log records after the first (which holds the compilation).
# Environment: STAGES (which stages, in this order; default all but sweep, parts and
# trainer_sweep), PYTHON, RUN_DIR, COMPILED_LIMIT, PRETRAIN_SECONDS, PRETRAIN_BATCH,
# PRETRAIN_LIMIT, SWEEP, SWEEP_LIMIT, TRAIN_SWEEP, TRAIN_SWEEP_SECONDS.
#   STAGES=sweep tools/bench/gpu_check.sh DATASET OUT_DIR   # the sweep alone, ~9 minutes
#   STAGES="parts trainer_sweep" tools/bench/gpu_check.sh DATASET OUT_DIR   # ~8 minutes
set -u
data=${1:?usage: gpu_check.sh DATASET OUT_DIR}
out=${2:?usage: gpu_check.sh DATASET OUT_DIR}
py=${PYTHON:-python3}
data=$(realpath -m -- "$data")  # the paths as given, before moving to the repository root
out=$(realpath -m -- "$out")
cd "$(dirname "$0")/../.."
mkdir -p "$out"
export PYTHONPATH=packages/nano-format/src:packages/nano-tokenizer/src:packages/nano-train/src
export PYTHONUNBUFFERED=1
log=$out/gpu_check.log
run_dir=${RUN_DIR:-/tmp/gpu_check_run}  # checkpoints are large: kept out of OUT_DIR

stages=" ${STAGES:-gpu shapes grad_check bench_eager bench_compiled pretrain} "
for name in $stages; do
    case $name in
    gpu | shapes | parts | grad_check | bench_eager | bench_compiled | sweep | trainer_sweep | pretrain) ;;
    *) echo "error: unknown stage '$name' in STAGES (gpu shapes parts grad_check bench_eager bench_compiled sweep trainer_sweep pretrain)" >&2
       exit 2 ;;
    esac
done
want() { [[ $stages == *" $1 "* ]]; }

stage() {  # stage NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "== $name: $(date -u +%T), limit ${limit}s" | tee -a "$log"
    timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$log"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc at $(date -u +%T)" | tee -a "$log"
    return "$rc"
}

if ! "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "error: $py has no torch that sees a CUDA GPU here (set PYTHON to one that does)" >&2
    exit 2
fi
want gpu && stage gpu 60 nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
want shapes && stage shapes 60 "$py" - <<'EOF'
# bf16 matmul rates: a large square product, and the 56M model's own products at
# batch 32 x 512 tokens (M = 16384): they bound the MFU that training can reach.
import torch, transformers
print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.cuda.get_device_name()}")
def rate(m, k, n, reps=50):
    a = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(k, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(5):
        start.record()
        for _ in range(reps):
            a @ b
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / reps)
    return 2 * m * k * n / sorted(times)[len(times) // 2]
for name, (m, k, n) in {"square 8192": (8192, 8192, 8192), "wq/wo 512->512": (16384, 512, 512),
                        "wk/wv 512->256": (16384, 512, 256), "w1/w3 512->1408": (16384, 512, 1408),
                        "w2 1408->512": (16384, 1408, 512), "classifier 512->16384": (16384, 512, 16384)}.items():
    print(f"  {name:24s} M={m:5d} K={k:5d} N={n:5d}: {rate(m, k, n) / 1e12:6.1f} TFLOP/s")
EOF
want parts && stage parts 120 "$py" tools/bench/gpu_parts.py --json "$out/parts.json"
want grad_check && stage grad_check 120 "$py" tools/bench/grad_check.py --layers 2 --batch 4 --seq 512
want bench_eager && stage bench_eager 120 "$py" tools/bench/train_speed.py --shape 56m --device cuda --dtype bfloat16 \
    --json "$out/bench_eager.json"
want bench_compiled && stage bench_compiled "${COMPILED_LIMIT:-200}" "$py" tools/bench/train_speed.py --shape 56m --device cuda \
    --dtype bfloat16 --compile --json "$out/bench_compiled.json"
if want sweep; then
    for variant in ${SWEEP:-blocked:default:32 plain:default:32 blocked:reduce-overhead:32 plain:reduce-overhead:32 plain:reduce-overhead:64}; do
        IFS=: read -r loss mode batch <<<"$variant"
        # TORCH_LOGS=recompiles: run B's compiled benchmark was slower than the trainer; a recompile would say why
        TORCH_LOGS=recompiles stage "sweep $loss $mode batch $batch" "${SWEEP_LIMIT:-150}" "$py" tools/bench/train_speed.py --shape 56m \
            --device cuda --dtype bfloat16 --compile ours --compile-mode "$mode" --ours-loss "$loss" --batch "$batch" \
            --rounds 3 --json "$out/sweep_${loss}_${mode}_b$batch.json"
    done
fi
if want trainer_sweep; then
    seconds=${TRAIN_SWEEP_SECONDS:-90}
    runs=()
    for variant in ${TRAIN_SWEEP:-blocked:default:32:auto blocked:reduce-overhead:32:auto plain:default:32:auto plain:reduce-overhead:32:auto}; do
        IFS=: read -r loss mode batch attn <<<"$variant"
        dir=$run_dir/sweep_${loss}_${mode}_b${batch}_${attn}
        rm -rf "$dir"
        stage "trainer $loss $mode batch $batch attention $attn" $((seconds + 60)) "$py" -m nano_train.pretrain \
            packages/nano-train/configs/gpu_56m.json --dataset="$data" --out_dir="$dir" --time_budget="$seconds" \
            --max_iters=1000000 --batch_size="$batch" --loss="$loss" --compile_mode="$mode" --attention_backend="$attn" \
            --eval_iters=0 --eval_interval=1000000 --checkpoint_interval=0 --sample_tokens=0 --log_interval=20
        runs+=("$variant=$dir/log.jsonl")
    done
    "$py" - "${runs[@]}" <<'EOF' 2>&1 | tee -a "$log" "$out/trainer_sweep.txt"
# the trainer's own records: median (and best) tokens/s and MFU after the first record
import json, statistics, sys
# and the training loss at step 500, to see that each variant learns
print(f"{'LOSS:MODE:BATCH:ATTENTION':44s} {'records':>7} {'steps':>6} {'tok/s median':>12} {'MFU median':>10} "
      f"{'best':>6} {'to 1st record':>13} {'loss@500':>8}")
for arg in sys.argv[1:]:
    variant, path = arg.split("=", 1)
    try:
        recs = [json.loads(line) for line in open(path)]
    except OSError as err:
        print(f"{variant:44s} no log: {err.strerror}")
        continue
    train = [r for r in recs if r.get("kind") == "train"]
    if len(train) < 2:
        print(f"{variant:44s} too few records ({len(train)})")
        continue
    # (null where the process was stopped, Ctrl-Z or SIGSTOP, through a record's steps)
    rates = [r["tokens_per_s"] for r in train[1:] if r["tokens_per_s"] is not None] or [0.0]
    mfus = [r["mfu"] for r in train[1:] if r["mfu"] is not None] or [0.0]
    at500 = next((f"{r['loss']:8.3f}" for r in train if r["step"] == 500), "       -")
    print(f"{variant:44s} {len(rates):7d} {train[-1]['step']:6d} {statistics.median(rates):12,.0f} "
          f"{100 * statistics.median(mfus):9.1f}% {100 * max(mfus):5.1f}% {train[0]['elapsed_s']:12.0f}s {at500}")
EOF
fi
want pretrain || exit 0
# its own folder, emptied first: a second call on a warm machine must not find (and copy) the last run
rm -rf "$run_dir/pretrain"
if stage pretrain "${PRETRAIN_LIMIT:-220}" "$py" -m nano_train.pretrain packages/nano-train/configs/gpu_56m.json \
    --dataset="$data" --out_dir="$run_dir/pretrain" --time_budget="${PRETRAIN_SECONDS:-150}" --max_iters=100000 \
    --batch_size="${PRETRAIN_BATCH:-32}" \
    --eval_interval=100000 --checkpoint_interval=0; then
    cp "$run_dir/pretrain/log.jsonl" "$run_dir/pretrain/report.md" "$out/" 2>/dev/null
fi

