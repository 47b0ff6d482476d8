#!/usr/bin/env bash
# Packs what `scripts/gpu_recipe.sh` needs on a GPU machine that has no Rust toolchain and no
# copy of ../shared, into one folder small enough to send along with the checkout:
#
#   bash scripts/gpu_bundle.sh [--out DIR] [--cuda-version 13000] [--data DIR]
#
# DIR (default .gpu, which git ignores) then holds
#   bin.tar.xz  bank-train, step_views and bank_step built here with `--features cuda`,
#               stripped and compressed (the release profile keeps line tables otherwise);
#   data/       the CIFAR-10 image folders of --data (default ../shared/data), which the
#               recipe's config reads;
#   run.sh      what to run there: unpacks the binaries into /tmp, runs
#               `scripts/gpu_recipe.sh --bin ... --data ... --runs /tmp/gpu-runs` with the
#               arguments it is given (e.g. `--minutes 8`), then copies the report's files
#               (gpu.log, cubecl.log.gz, step.jsonl, bank.jsonl, ablation.md, ablation.png, and
#               the runs' metrics) into $OUT when that is set, flat, at most eight files.
# and the script prints DIR's size. --cuda-version is the CUDA version of the GPU machine's driver
# as cudarc spells it (13000 for CUDA 13.0; without nvcc here cudarc would assume its newest).
# The binaries link glibc dynamically: build them on a system no newer than the GPU machine's.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT_DIR=$ROOT/.gpu
CUDA_VERSION=13000
DATA=${MEMBANK_DATA:-$ROOT/../shared/data}

die() { echo "gpu_bundle: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --out|--cuda-version|--data) [ $# -ge 2 ] || die "$1 needs a value" ;;&
        --out) OUT_DIR=$2; shift 2 ;;
        --cuda-version) CUDA_VERSION=$2; shift 2 ;;
        --data) DATA=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[[ $CUDA_VERSION =~ ^[0-9]+$ ]] || die "--cuda-version must be a number such as 13000, not '$CUDA_VERSION'"
[ -d "$DATA/cifar10" ] || die "--data $DATA has no cifar10 folder"
command -v cargo >/dev/null || die "no cargo: install Rust first"
command -v xz >/dev/null || die "no xz: install xz-utils first"
command -v strip >/dev/null || die "no strip: install binutils first"

echo "gpu_bundle: building the CUDA binaries (CUDARC_CUDA_VERSION=$CUDA_VERSION)"
(cd "$ROOT" && CUDARC_CUDA_VERSION=$CUDA_VERSION cargo build --release -p bank-train \
    -p membank-benches --no-default-features --features bank-train/cuda,membank-benches/cuda \
    --bin bank-train --example step_views --example bank_step)

mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cp "$ROOT/target/release/bank-train" "$ROOT/target/release/examples/step_views" \
    "$ROOT/target/release/examples/bank_step" "$stage/"
strip "$stage"/*
tar -C "$stage" -cJf "$OUT_DIR/bin.tar.xz" bank-train step_views bank_step
rm -rf "$OUT_DIR/data"
mkdir -p "$OUT_DIR/data"
cp -r "$DATA/cifar10" "$OUT_DIR/data/"

cat > "$OUT_DIR/run.sh" <<'RUN'
#!/usr/bin/env bash
# Made by scripts/gpu_bundle.sh: run from the repository's root on the GPU machine,
#   bash .gpu/run.sh [gpu_recipe.sh's arguments, e.g. --minutes 8]
# The report is copied at the end: give --minutes a margin under any limit the call runs under.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
BIN=/tmp/membank-bin
RUNS=/tmp/gpu-runs
mkdir -p "$BIN" "$RUNS" && tar -C "$BIN" -xJf "$HERE/bin.tar.xz" || exit 2
bash "$ROOT/scripts/gpu_recipe.sh" --bin "$BIN" --data "$HERE/data" --runs "$RUNS" "$@"
rc=$?
if [ -n "${OUT:-}" ]; then
    n=0
    for f in "$RUNS"/gpu.log "$RUNS"/cubecl.log.gz "$RUNS"/step.jsonl "$RUNS"/bank.jsonl \
             "$RUNS"/*-ablation/ablation.md "$RUNS"/*-ablation/ablation.png \
             "$RUNS"/*-ablation/*/metrics.jsonl; do
        [ -f "$f" ] && [ $n -lt 8 ] || continue
        name=$(echo "${f#"$RUNS"/}" | tr '/' '_')
        cp "$f" "$OUT/$name" && n=$((n + 1))
    done
    echo "run.sh: $n files copied to \$OUT"
fi
exit $rc
RUN
chmod +x "$OUT_DIR/run.sh"
echo "gpu_bundle: $OUT_DIR holds $(du -sh "$OUT_DIR" | cut -f1):"
du -sh "$OUT_DIR"/* | sed 's/^/  /'
