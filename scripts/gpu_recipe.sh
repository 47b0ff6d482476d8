#!/usr/bin/env bash
# The GPU check in one command: membank on a CUDA GPU against PyTorch on the same GPU, and the
# paper recipe shortened to fit about 10 minutes (ResNet-18, vanilla NPID against the full
# method, kNN against the bank after every epoch).
#
#   bash scripts/gpu_recipe.sh [--data DIR] [--runs DIR] [--minutes 10] [--bin DIR]
#                              [--parts profile,recipe,step,bank] [--config FILE]
#
# Parts (all by default, in this order), each bounded so that the whole ends within --minutes:
#   profile one ResNet-18 step run (B = 128, K = 1, 2 + 3 steps, each step's time as it ends)
#           under CUBECL_DEBUG_LOG: cubecl's compilations, autotuning and kernel timings go to
#           cubecl.log (gzipped), to see where a step's time goes;
#   recipe  configs/cifar10_resnet18_short.toml as `bank-train ablation --variants vanilla` and
#           `--variants full`, both at once on the one GPU, until the time kept for the other
#           parts; then the ablation report (ablation.md, ablation.png);
#   step    the training step of ResNet-18 (CIFAR stem), B = 128, K = 1 and 2, bank of 5,000
#           rows, synthetic batches on the device: membank (benches/examples/step_views.rs)
#           against benches/peer/step_torch.py --device cuda, alternating, 2 rounds, medians;
#   bank    the step against the bank alone (similarities, full-softmax loss, backward to the
#           features, bank update), B·K = 512, D = 128, N = 50,000 and 1,000,000: membank
#           (benches/examples/bank_step.rs) against benches/peer/bank_step_torch.py, which also
#           compares the first step's loss, gradient and updated rows with membank's.
# At the end: the medians and ratios, and the kNN per epoch of each run.
#
# --bin DIR takes prebuilt binaries (DIR/bank-train, DIR/step_views, DIR/bank_step), for a GPU
# machine without Rust. Built elsewhere (glibc no newer than the GPU machine's) with
#   CUDARC_CUDA_VERSION=13000 cargo build --release -p bank-train -p membank-benches \
#       --no-default-features --features bank-train/cuda,membank-benches/cuda \
#       --bin bank-train --example step_views --example bank_step
# (the CUDA version the GPU machine's driver supports, as cudarc spells it; without nvcc cudarc
# assumes its newest), then copied from target/release and target/release/examples. Without
# --bin the script builds them with cargo first (not counted in --minutes). The PyTorch side needs a python3 whose torch sees the GPU (MEMBANK_PYTHON names
# another); without one, the membank side still runs. CUDA is found through CUDA_PATH, else
# /usr/local/cuda, else the directory above `nvcc`; NVRTC (which compiles membank's kernels at
# run time) must be in it or in torch's nvidia packages.
# Everything goes to --runs (default runs/gpu): gpu.log, cubecl.log.gz, step.jsonl, bank.jsonl
# and the runs.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DATA=${MEMBANK_DATA:-$ROOT/../shared/data}
RUNS=$ROOT/runs/gpu
MINUTES=10
BIN=""
PARTS=profile,recipe,step,bank
CONFIG=$ROOT/configs/cifar10_resnet18_short.toml
PYTHON=${MEMBANK_PYTHON:-python3}

die() { echo "gpu_recipe: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --data|--runs|--minutes|--bin|--parts|--config)
            [ $# -ge 2 ] || die "$1 needs a value" ;;&
        --data) DATA=$2; shift 2 ;;
        --runs) RUNS=$2; shift 2 ;;
        --minutes) MINUTES=$2; shift 2 ;;
        --bin) BIN=$2; shift 2 ;;
        --parts) PARTS=$2; shift 2 ;;
        --config) CONFIG=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d'; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[[ $MINUTES =~ ^[0-9]+$ ]] && [ $((10#$MINUTES)) -gt 0 ] || die "--minutes must be a whole number > 0, not '$MINUTES'"
MINUTES=$((10#$MINUTES))
[ -f "$CONFIG" ] || die "--config $CONFIG: no such file"
mkdir -p "$RUNS" || die "cannot create --runs $RUNS"
RUNS=$(cd "$RUNS" && pwd)
LOG=$RUNS/gpu.log
exec > >(tee -a "$LOG") 2>&1
has_part() { [[ ",$PARTS," == *",$1,"* ]]; }

# --- binaries ---------------------------------------------------------------------------------
if [ -z "$BIN" ]; then
    command -v cargo >/dev/null || die "no cargo: install Rust, or pass --bin DIR with prebuilt binaries"
    echo "gpu_recipe: building the CUDA binaries (cargo build --release --features cuda)"
    (cd "$ROOT" && cargo build --release -p bank-train -p membank-benches --no-default-features \
        --features bank-train/cuda,membank-benches/cuda \
        --bin bank-train --example step_views --example bank_step) || die "the build failed"
    mkdir -p "$RUNS/bin"
    cp "$ROOT/target/release/bank-train" "$ROOT/target/release/examples/step_views" \
        "$ROOT/target/release/examples/bank_step" "$RUNS/bin/"
    BIN=$RUNS/bin
fi
BIN=$(cd "$BIN" && pwd) || die "--bin: no such folder"
for b in bank-train step_views bank_step; do
    [ -x "$BIN/$b" ] || die "--bin $BIN has no executable $b"
done

# --- CUDA -------------------------------------------------------------------------------------
if [ -z "${CUDA_PATH:-}" ]; then
    if [ -d /usr/local/cuda ]; then
        CUDA_PATH=/usr/local/cuda
    elif command -v nvcc >/dev/null; then
        CUDA_PATH=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")
    fi
fi
[ -n "${CUDA_PATH:-}" ] && export CUDA_PATH
lib_dirs=()
for d in "${CUDA_PATH:-/nonexistent}/lib64" "${CUDA_PATH:-/nonexistent}/lib" \
         "${CUDA_PATH:-/nonexistent}/targets/x86_64-linux/lib"; do
    compgen -G "$d/libnvrtc.so*" >/dev/null && lib_dirs+=("$d")
done
if [ ${#lib_dirs[@]} -eq 0 ] && command -v "$PYTHON" >/dev/null; then
    site=$("$PYTHON" -c 'import site; print(site.getsitepackages()[0])' 2>/dev/null || true)
    if [ -n "$site" ] && [ -d "$site/nvidia" ]; then
        while IFS= read -r f; do lib_dirs+=("$(dirname "$f")"); done \
            < <(find "$site/nvidia" -maxdepth 4 -name 'libnvrtc.so*' | head -1)
    fi
fi
for d in ${lib_dirs[@]+"${lib_dirs[@]}"}; do LD_LIBRARY_PATH=$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}; done
export LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}
echo "gpu_recipe: $(date -u +%FT%TZ), CUDA_PATH=${CUDA_PATH:-unset}, NVRTC in: ${lib_dirs[*]:-not found}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || true

START=$(date +%s)
DEADLINE=$((START + MINUTES * 60))
PART_END=$DEADLINE
left() { echo $((DEADLINE - $(date +%s))); }
# `bounded SECONDS CMD...`: CMD under a timeout of SECONDS, never past the deadline nor past
# the current part's end (PART_END).
bounded() {
    local want=$1; shift
    local l; l=$(( (PART_END < DEADLINE ? PART_END : DEADLINE) - $(date +%s) ))
    [ "$l" -lt "$want" ] && want=$l
    [ "$want" -lt 5 ] && { echo "gpu_recipe: no time left for: $*"; return 124; }
    timeout --signal=INT --kill-after=10 "$want" "$@"
}
TORCH=0
if "$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    TORCH=1
    echo "gpu_recipe: PyTorch $("$PYTHON" -c 'import torch; print(torch.__version__)') sees the GPU"
else
    echo "gpu_recipe: no python3 with a CUDA torch: the PyTorch side is skipped"
fi

# --- part profile -----------------------------------------------------------------------------
if has_part profile; then
    echo; echo "== profile: ResNet-18, B = 128, K = 1, 2 + 3 steps under CUBECL_DEBUG_LOG"
    rm -f "$RUNS/cubecl.log" "$RUNS/cubecl.log.gz"
    (cd "$ROOT" && CUBECL_DEBUG_LOG=$RUNS/cubecl.log bounded 120 "$BIN/step_views" --arch resnet18 \
        --views 1 --batch 128 --bank 5000 --steps 3 --warmup 2 --log-steps 2>&1 | grep --line-buffered -v WARN)
    [ -f "$RUNS/cubecl.log" ] && gzip -f "$RUNS/cubecl.log" && ls -la "$RUNS/cubecl.log.gz"
fi

# --- part recipe ------------------------------------------------------------------------------
if has_part recipe; then
    echo; echo "== recipe: $(basename "$CONFIG"), vanilla NPID and the full method at once, $(left) s left"
    # Time kept for the other parts asked for, and for the report.
    reserve=20
    has_part step && reserve=$((reserve + 110))
    has_part bank && reserve=$((reserve + 50))
    pids=()
    # `--no-linear-probe`: the minutes go to the kNN curves; `bank-train eval --protocol linear`
    # probes a finished run afterwards.
    for v in vanilla full; do
        (cd "$ROOT" && bounded $(($(left) - reserve)) "$BIN/bank-train" ablation --config "$CONFIG" \
            --data "$DATA" --runs "$RUNS" --variants "$v" --seeds 1 --no-linear-probe \
            > "$RUNS/recipe-$v.log" 2>&1) &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p"; done
    for v in vanilla full; do echo "-- $v (last lines of recipe-$v.log)"; tail -n 4 "$RUNS/recipe-$v.log"; done
    (cd "$ROOT" && "$BIN/bank-train" ablation --config "$CONFIG" --data "$DATA" --runs "$RUNS" \
        --variants vanilla,full --seeds 1 --report-only) || true
fi

# --- part step --------------------------------------------------------------------------------
if has_part step; then
    echo; echo "== step: ResNet-18, B = 128, N = 5,000, K = 1 and 2 (views/s; 2 alternating rounds)"
    # The bank part keeps its share.
    has_part bank && PART_END=$(( $(date +%s) + $(left) - 50 ))
    : > "$RUNS/step.jsonl"
    for round in 1 2; do
        for k in 1 2; do
            common=(--arch resnet18 --views "$k" --batch 128 --bank 5000 --steps 30 --warmup 10)
            (cd "$ROOT" && bounded 150 "$BIN/step_views" "${common[@]}" --log-steps) | tee -a "$RUNS/step.jsonl"
            rc=${PIPESTATUS[0]}
            [ "$rc" = 0 ] || echo "gpu_recipe: membank's step (K = $k) stopped with status $rc (124 or 137: out of time)"
            [ $TORCH = 1 ] && bounded 90 "$PYTHON" "$ROOT/benches/peer/step_torch.py" "${common[@]}" \
                --device cuda | tee -a "$RUNS/step.jsonl"
        done
    done
fi

PART_END=$DEADLINE

# --- part bank --------------------------------------------------------------------------------
if has_part bank; then
    echo; echo "== bank: the step against the bank alone, B·K = 512, D = 128 (median ms)"
    : > "$RUNS/bank.jsonl"
    for n in 50000 1000000; do
        inputs=$RUNS/bank-$n
        [ -f "$inputs/bank.npy" ] || bounded 60 "$PYTHON" "$ROOT/benches/peer/bank_step_torch.py" make \
            --out "$inputs" --rows "$n" --samples 256 --views 2 || continue
        (cd "$ROOT" && bounded 90 "$BIN/bank_step" "$inputs" --views 2 --steps 20 --warmup 5 \
            --out "$inputs/membank") | tee -a "$RUNS/bank.jsonl"
        [ $TORCH = 1 ] && bounded 60 "$PYTHON" "$ROOT/benches/peer/bank_step_torch.py" step "$inputs" \
            --views 2 --steps 20 --warmup 5 --device cuda --check "$inputs/membank" | tee -a "$RUNS/bank.jsonl"
        rm -f "$inputs/bank.npy"
    done
fi

# --- summary ----------------------------------------------------------------------------------
echo; echo "== summary after $(($(date +%s) - START)) s"
if command -v "$PYTHON" >/dev/null; then
    "$PYTHON" - "$RUNS" <<'PY'
import glob, json, os, statistics, sys
runs = sys.argv[1]
def lines(path):
    try:
        return [json.loads(l) for l in open(path) if l.startswith("{")]
    except FileNotFoundError:
        return []
step = lines(os.path.join(runs, "step.jsonl"))
if step:
    print("step, ResNet-18 (views/s, median; first-step loss):")
    for k in (1, 2):
        side = {t: [r for r in step if r["tool"] == t and r["views"] == k] for t in ("membank", "pytorch")}
        med = {t: statistics.median(r["views_per_s"] for r in rs) if rs else None for t, rs in side.items()}
        loss = {t: rs[0]["first_loss"] if rs else None for t, rs in side.items()}
        ratio = f"{med['membank'] / med['pytorch']:.2f}x" if med["membank"] and med["pytorch"] else "-"
        print(f"  K={k}: membank {med['membank']}, PyTorch {med['pytorch']}, membank/PyTorch {ratio}; "
              f"loss {loss['membank']} / {loss['pytorch']}")
        for r in side["membank"]:
            if "step_ms" in r:
                print(f"    membank ms per step (warm-up first): {r['step_ms']}")
bank = lines(os.path.join(runs, "bank.jsonl"))
if bank:
    print("bank step (median ms):")
    for r in bank:
        keys = ("tool", "rows", "step_ms", "matmul_ms", "loss", "loss_diff", "grad_rel_diff", "rows_rel_diff")
        print("  " + ", ".join(f"{k} {r[k]}" for k in keys if k in r))
for m in sorted(glob.glob(os.path.join(runs, "*-ablation", "*", "metrics.jsonl"))):
    rows = lines(m)
    print(f"{os.path.basename(os.path.dirname(m))}: kNN top-1 vs bank per epoch (views/s):")
    print("  " + " ".join(f"{r['epoch']}:{100 * r['knn_bank']['top1']:.2f}({r['views_per_s']:.0f})"
                          for r in rows if r.get("knn_bank")))
PY
fi
