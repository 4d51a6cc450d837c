#!/usr/bin/env bash
# One GPU check of the whole path, under 8 minutes: ViT-B/16 224 training img/s in bf16 (steady state,
# dftune vs the Trainer way), evaluate/predict img/s and videos/s on CUDA, and the exported script on the
# demo's videos with CUDA. Prints every figure and appends a dated block to LOG (default
# benchmarks/device_check.log).
#   bash benchmarks/device_check.sh [LOG]
# Exit: 0 all steps passed; 3 no CUDA here (nothing run); otherwise non-zero naming the step that broke.
# A step that breaks with CUDA present FAILS the check; no step is skipped.
set -uo pipefail
cd "$(dirname "$0")/.."
LOG=${1:-benchmarks/device_check.log}
PY=${PYTHON:-python}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
WORK=$(mktemp -d -t dftune-device-XXXXXX)
trap 'rm -rf "$WORK"' EXIT
BLOCK="$WORK/block.txt"

if ! $PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)" 2>/dev/null; then
  echo "device_check: no CUDA device here (torch.cuda.is_available() is False or torch is missing): nothing run" >&2
  exit 3
fi

note() { echo "$*" | tee -a "$BLOCK"; }
fail() {
  note "FAILED: step '$1' ($2)"
  { echo "== device_check $(date -u +%FT%TZ) FAILED at $1"; cat "$BLOCK"; echo; } >> "$LOG"
  echo "device_check: FAILED at step '$1': $2 (see $LOG)" >&2
  exit "${3:-1}"
}
step() {  # step NAME SECONDS CMD...: run with a time limit; output to the block; failure fails the check
  local name=$1 limit=$2; shift 2
  note "-- $name: $*"
  local t0=$SECONDS
  timeout "$limit" "$@" > "$WORK/$name.out" 2>&1
  local rc=$?
  grep -v -i "warning" "$WORK/$name.out" | tail -n 15 | tee -a "$BLOCK"
  [ $rc -eq 0 ] || fail "$name" "exit $rc$([ $rc -eq 124 ] && echo ', over its '"$limit"' s limit')" 10
  note "   ($((SECONDS - t0)) s)"
}

note "host $(hostname); $($PY -c 'import torch; print(torch.__version__, torch.cuda.get_device_name(0))')"
NCPU=$(nproc)

# 1. training: ViT-B/16 224 bf16, step only and dftune's loop (throughput mode), then dftune vs the Trainer
#    way (peers mode), steady state = the hook's steps after --skip-steps
step train_throughput 150 $PY benchmarks/bench_train.py --workers "$((NCPU < 8 ? NCPU : 8))" --steps 30 --epochs 1
step train_peers 200 $PY benchmarks/bench_train.py --peers --size vitb --ways dftune,trainer --repeats 1 \
  --precision bf16 --epochs 1 --videos 4 --workers "$((NCPU < 8 ? NCPU : 8))" --threads 2

# 2. the demo's data and model (prepare, train, evaluate, predict, export all run on CUDA)
step demo 150 $PY -m dftune demo --out "$WORK/demo" --epochs 1 --no-progress
DEMO="$WORK/demo"
[ -d "$DEMO/submission" ] || fail demo "no submission folder written" 11

# 3. evaluate and predict rates on CUDA (images: the prepared test crops; videos: the demo's videos)
CROPS="$DEMO/prepared/test"
VIDS=$(find "$DEMO/FaceForensics++" -name '*.mp4' | head -n 12)
mkdir -p "$WORK/vids" && for v in $VIDS; do ln -s "$v" "$WORK/vids/$(echo "$v" | md5sum | cut -c1-8).mp4"; done
NV=$(ls "$WORK/vids" | wc -l)
NI=$(find "$CROPS" -name '*.jpg' | wc -l)
[ "$NV" -gt 0 ] && [ "$NI" -gt 0 ] || fail inputs "no demo videos ($NV) or crops ($NI) found" 12
rate() { $PY -c "import sys; print(f'{int(sys.argv[1]) / max(1e-9, float(sys.argv[2])):.2f}')" "$1" "$2"; }
timed() { local t0; t0=$($PY -c 'import time; print(time.time())'); "$@" || return $?
          $PY -c "import sys, time; print(time.time() - float(sys.argv[1]))" "$t0" > "$WORK/dt"; }
note "-- evaluate_cuda"
timed timeout 90 $PY -m dftune evaluate --model "$DEMO/run/best" --data "$DEMO/prepared" --out "$WORK/ev" \
  --device cuda --no-progress > "$WORK/ev.out" 2>&1 || { tail -n 15 "$WORK/ev.out" | tee -a "$BLOCK"; fail evaluate_cuda "evaluate failed on CUDA" 13; }
note "   evaluate (val+test crops of the demo): $(cat "$WORK/dt" | cut -c1-6) s"
note "-- predict_cuda"
timed timeout 90 $PY -m dftune predict "$CROPS" --model "$DEMO/run/best" --device cuda --detector none \
  --out "$WORK/p_img.csv" --no-progress > "$WORK/p.out" 2>&1 || { tail -n 15 "$WORK/p.out" | tee -a "$BLOCK"; fail predict_images_cuda "predict failed on CUDA" 14; }
note "   predict images: $(rate "$NI" "$(cat "$WORK/dt")") img/s ($NI crops, detector none)"
for W in 1 "$NCPU"; do
  timed timeout 120 $PY -m dftune predict "$WORK/vids" --model "$DEMO/run/best" --device cuda --workers "$W" \
    --out "$WORK/p_vid_$W.csv" --no-progress > "$WORK/p.out" 2>&1 || { tail -n 15 "$WORK/p.out" | tee -a "$BLOCK"; fail predict_videos_cuda "predict --workers $W failed on CUDA" 15; }
  note "   predict videos, $W workers: $(rate "$NV" "$(cat "$WORK/dt")") videos/s ($NV videos)"
done
cmp -s "$WORK/p_vid_1.csv" "$WORK/p_vid_$NCPU.csv" || fail predict_workers_parity "CSV with 1 and $NCPU workers differ" 16

# 4. the exported script on the demo's videos with CUDA, all workers, the contest format
note "-- script_cuda"
timed timeout 120 $PY "$DEMO/submission/predict_submission.py" "$WORK/vids" --device cuda --workers "$NCPU" \
  --format filename,label --out "$WORK/s.csv" > "$WORK/s.out" 2>&1 || { tail -n 15 "$WORK/s.out" | tee -a "$BLOCK"; fail script_cuda "the exported script failed on CUDA" 17; }
note "   script videos, $NCPU workers: $(rate "$NV" "$(cat "$WORK/dt")") videos/s; $(tail -n 1 "$WORK/s.out")"
ROWS=$(($(wc -l < "$WORK/s.csv") - 1))
[ "$ROWS" -eq "$NV" ] || fail script_rows "$ROWS rows for $NV videos" 18
[ "$(head -n 1 "$WORK/s.csv")" = "filename,label" ] || fail script_format "header is not filename,label" 19

{ echo "== device_check $(date -u +%FT%TZ) PASSED"; cat "$BLOCK"; echo; } >> "$LOG"
echo "device_check: all steps passed (appended to $LOG)"
