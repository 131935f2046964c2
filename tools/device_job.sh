#!/usr/bin/env bash
# tools/device_job.sh -- everything one call on a lent GPU machine does, in one script.
#
#   1. builds the C++/CUDA core for the card (sm_90 by default), runs the GPU tests (CUDA warp; CUDA contextual
#      attention vs the golden reference, fp32 / fp16, and inside the inpainter) and the benchmarks with their
#      baselines in the same run: CUDA warp vs our CPU warp; the contextual attention kernel vs the PyTorch layer
#      vs the bytes/FLOPs floor (batch 1 and 32, 28..64 px maps, fp32/fp16) and the inpainter's faces/s (torch layer
#      vs kernel on the card, ONNX Runtime on the CPU);
#   2. (JOB=all) trains the inpainter twice at once on the GPU, with and without the ID-GAN identity loss (same
#      data, seed, batch and wall-clock budget), each followed by its held-out PSNR/SSIM evaluation;
#   3. packs logs, checkpoints and eval JSON into $OUT (at most 8 files, each < 16 MB).
#
# JOB=kernels runs step 1 only (no PACK needed, ~5 min on an H200: `JOB=kernels bash tools/device_job.sh`).
# JOB=pipeline builds the core, runs tests/test_backends.py (its gpu / tensorrt tests: the torch CUDA backend vs ONNX
# Runtime per family, fp16, CUDA graphs, the fused attention in the inpainter) and benchmarks/bench_backends.py (the
# whole pipeline on the torch CUDA backend vs ONNX Runtime on the CPU: faces/s at batch 1, 8, 32 and frames/s of 4
# simulated 1080p streams; BB_ARGS: extra arguments), then packs pipeline.tgz (no PACK needed, ~6 min).
#
# Inputs (a git-ignored folder carried to the machine, made by `python trainer/main.py pack-faces ...`):
#   PACK/celeba_faces.npz, PACK/dlib_face_recognition_resnet_model_v1.dat, PACK/mask_templates/
# Knobs: JOB (all | kernels | pipeline), MINUTES (training wall time per run), DEVICE (cuda | cpu), STEPS, BATCH, WORKERS, PY,
# CUDAARCHS, GREY_PROB (0.2: a fifth of the faces greyscale; the 2026-11-27 run used 0), EXTRA_ARGS (e.g. --resume),
# CA_BENCH_ARGS (extra arguments of benchmarks/bench_contextual_attention.py).
# Dry run here, without a GPU:
#   OUT=out/device_dry DEVICE=cpu MINUTES=0.2 STEPS=3 BATCH=4 WORKERS=0 VAL=2 PY=.venv/bin/python \
#       SKIP_BUILD=1 bash tools/device_job.sh
#   OUT=out/device_dry JOB=kernels NO_BUILD=1 PY=.venv/bin/python \
#       CA_BENCH_ARGS="--device cpu --sizes 28 --batches 1 --repeats 2" bash tools/device_job.sh
#   OUT=out/device_dry JOB=pipeline NO_BUILD=1 PY=.venv/bin/python \
#       BB_ARGS="--device cpu --batches 1,8 --repeats 2 --stream-seconds 5" bash tools/device_job.sh
set -uo pipefail
OUT=${OUT:-out/device_job}
JOB=${JOB:-all}
PACK=${PACK:-.device}
MINUTES=${MINUTES:-6}
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-100000}
BATCH=${BATCH:-32}
WORKERS=${WORKERS:-6}
VAL=${VAL:-120}
PY=${PY:-python3}
RUNS=${RUNS:-$OUT/runs}
mkdir -p "$OUT" "$RUNS"
export PYTHONUNBUFFERED=1
T0=$(date +%s)
log() { echo "[$(( $(date +%s) - T0 ))s] $*"; }

{ nvidia-smi 2>&1 || true; $PY -c "import sys, torch, numpy, cv2; print(sys.version); print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-'); print('numpy', numpy.__version__, 'cv2', cv2.__version__)"; nproc; } > "$OUT/env.txt" 2>&1
log "env: $(tail -n 3 "$OUT/env.txt" | tr '\n' ' ')"

build_core() {  # the C++/CUDA core for the card (NO_BUILD=1: keep the one installed); 1 on failure
  if [ -z "${NO_BUILD:-}" ]; then
    TB=$(date +%s)
    CUDAARCHS=${CUDAARCHS:-90} $PY -m pip install --no-build-isolation --no-deps -e . > "$RUNS/build.log" 2>&1 \
      || { echo "CUDA build failed" >> "$RUNS/build.log"; return 1; }
    echo "build seconds: $(( $(date +%s) - TB ))" >> "$RUNS/build.log"
  fi
  $PY -c "from sdk import _native; print(_native.build_info()); print(_native.cuda_info())" >> "$RUNS/build.log" 2>&1
}

# ---- JOB=pipeline: backends (torch CUDA vs ONNX Runtime CPU), GPU tests + the whole-pipeline benchmark ------------
if [ "$JOB" = "pipeline" ]; then
  build_core; log "build rc=$?"
  $PY -m pytest -q -p no:cacheprovider -rs tests/test_backends.py > "$RUNS/backend_tests.log" 2>&1
  log "backend tests rc=$?: $(tail -n 1 "$RUNS/backend_tests.log")"
  $PY benchmarks/bench_backends.py ${BB_ARGS:-} --out "$RUNS/bench_backends.json" > "$RUNS/bench_backends.log" 2>&1
  log "bench_backends rc=$?"
  cp "$OUT/env.txt" "$RUNS/env.txt"
  tar czf "$OUT/pipeline.tgz" -C "$RUNS" $(cd "$RUNS" && ls env.txt build.log backend_tests.log bench_backends.json \
      bench_backends.log 2>/dev/null)
  ls -la "$OUT"
  tail -n 12 "$RUNS/bench_backends.log" 2>/dev/null
  log "done"
  exit 0
fi

# ---- 1. build + GPU tests + kernel benchmarks (background; the trainings do not need the C++ core) ----------------
# SKIP_BUILD=1 skips all of step 1 (training dry runs); NO_BUILD=1 skips only the build (kernel dry runs).
(
  if [ -z "${SKIP_BUILD:-}" ]; then
    build_core || exit 1
    $PY -m pytest -q -m gpu -p no:cacheprovider -rs tests/test_kernels_align.py \
      tests/test_contextual_attention_cuda.py > "$RUNS/gpu_tests.log" 2>&1
    $PY -m pytest -q -p no:cacheprovider tests/test_kernels_align.py tests/test_kernels_contextual_attention.py \
      tests/test_kernels_search.py tests/test_contextual_attention_cuda.py tests/test_trt_onnx.py \
      tests/test_export_trt.py > "$RUNS/kernel_tests.log" 2>&1
    LOOKTHROUGH_EMU_UBSAN=1 $PY -m pytest -q -p no:cacheprovider tests/test_contextual_attention_cuda_emu.py \
      >> "$RUNS/kernel_tests.log" 2>&1
    $PY benchmarks/bench_kernels.py --out "$RUNS/bench_kernels.json" > "$RUNS/bench_kernels.log" 2>&1
    $PY benchmarks/bench_contextual_attention.py --inpainter ${CA_BENCH_ARGS:-} \
      --out "$RUNS/bench_contextual_attention.json" > "$RUNS/bench_contextual_attention.log" 2>&1
    echo "bench_contextual_attention rc=$?" >> "$RUNS/bench_contextual_attention.log"
  fi
) &
BUILD_PID=$!

if [ "$JOB" = "kernels" ]; then
  wait $BUILD_PID; log "build/tests/bench rc=$?"
  cp "$OUT/env.txt" "$RUNS/env.txt"
  tar czf "$OUT/kernels.tgz" -C "$RUNS" $(cd "$RUNS" && ls env.txt build.log gpu_tests.log kernel_tests.log \
      bench_kernels.json bench_kernels.log bench_contextual_attention.json bench_contextual_attention.log 2>/dev/null)
  ls -la "$OUT"
  tail -n 4 "$RUNS/gpu_tests.log" "$RUNS/kernel_tests.log" "$RUNS/bench_contextual_attention.log" 2>/dev/null
  log "done"
  exit 0
fi

# ---- 2. the two inpainter runs ----------------------------------------------------------------------------------------
COMMON=(--faces "$PACK/celeba_faces.npz" --templates "$PACK/mask_templates" --teacher
        "$PACK/dlib_face_recognition_resnet_model_v1.dat" --images-per-identity 0 --device "$DEVICE"
        --workers "$WORKERS" --batch-size "$BATCH" --steps "$STEPS" --max-minutes "$MINUTES" --val-images "$VAL"
        --grey-prob "${GREY_PROB:-0.2}" --ckpt-every 500 --snapshot-every 250 --grid-every 1000 --log-every 50 --no-progress)
$PY trainer/main.py inpainter "${COMMON[@]}" ${EXTRA_ARGS:-} --id-loss --out "$RUNS/id" > "$RUNS/id.log" 2>&1 &
ID_PID=$!
$PY trainer/main.py inpainter "${COMMON[@]}" ${EXTRA_ARGS:-} --no-id-loss --out "$RUNS/noid" > "$RUNS/noid.log" 2>&1 &
NOID_PID=$!
log "started: build $BUILD_PID, id $ID_PID, noid $NOID_PID"

# fail fast: if both trainings die in their first minute, stop here (a rerun has time left)
for _ in $(seq 1 12); do
  sleep 5
  if ! kill -0 $ID_PID 2>/dev/null && ! kill -0 $NOID_PID 2>/dev/null; then break; fi
done
if ! kill -0 $ID_PID 2>/dev/null && ! kill -0 $NOID_PID 2>/dev/null && [ ! -f "$RUNS/id/eval.json" ]; then
  log "both trainings ended early:"; tail -n 25 "$RUNS/id.log" "$RUNS/noid.log"
fi
for name in id noid; do tail -n 3 "$RUNS/$name/log.csv" 2>/dev/null | sed "s/^/$name: /"; done

wait $ID_PID; ID_RC=$?
wait $NOID_PID; NOID_RC=$?
log "trainings done: id rc=$ID_RC noid rc=$NOID_RC"
wait $BUILD_PID; log "build/tests/bench rc=$?"
gen_dir="$RUNS/id"; [ -f "$gen_dir/ckpt/last.safetensors" ] || gen_dir=""
$PY benchmarks/bench_inpainter.py ${gen_dir:+--generator "$gen_dir"} --threads "${BENCH_THREADS:-1}" \
    --out "$RUNS/bench_inpainter.json" > "$RUNS/bench_inpainter.log" 2>&1; log "inpainter bench rc=$?"

# ---- 3. pack the results ---------------------------------------------------------------------------------------------
# the runs share a wall-clock budget, so they end at different step counts: keep each run's snapshot at the
# other run's final step too (rounded down to a snapshot), for a same-steps comparison
steps_of() { $PY -c "import json,sys; print(json.load(open(sys.argv[1]))['steps'])" "$1" 2>/dev/null || echo 0; }
ID_STEPS=$(steps_of "$RUNS/id/eval.json"); NOID_STEPS=$(steps_of "$RUNS/noid/eval.json")
pick_snapshot() {  # run, step -> the last snapshot at or before step
  ls "$RUNS/$1"/snapshots/step_*.safetensors 2>/dev/null | grep -v '\.optim\.' | awk -F_ -v s="$2" '{n=$NF; sub(/\..*/,"",n); if (n+0 <= s+0) f=$0} END {if (f) print f}'
}
snap_files() {  # a snapshot's weights + JSON, relative to $RUNS
  [ -n "$2" ] && echo "$1/snapshots/$(basename "$2")" "$1/snapshots/$(basename "${2%.safetensors}").json"
}
SNAP_NOID=$(pick_snapshot noid "$ID_STEPS"); SNAP_ID=$(pick_snapshot id "$NOID_STEPS")
log "steps: id $ID_STEPS noid $NOID_STEPS; snapshots kept: ${SNAP_NOID:-none} ${SNAP_ID:-none}"
for name in id noid; do
  d="$RUNS/$name"
  [ -d "$d" ] || continue
  last_grid=$(ls "$d"/grids/*.png 2>/dev/null | tail -n 1)
  # one checkpoint format (trainer/checkpoints.py): ckpt/last.{safetensors,json} = generator + critics + config,
  # ckpt/last.optim.safetensors = both optimisers + RNG (for --resume); older runs wrote generator.safetensors etc.
  tar czf "$OUT/inpainter_$name.tgz" -C "$RUNS" "$name.log" \
      $(cd "$RUNS" && ls "$name"/{ckpt/last.safetensors,ckpt/last.json,eval.json,log.csv} 2>/dev/null) \
      ${last_grid:+"$name/grids/$(basename "$last_grid")"} \
      $( [ "$name" = noid ] && snap_files noid "$SNAP_NOID" ) \
      $( [ "$name" = id ] && snap_files id "$SNAP_ID" )
  tar czf "$OUT/inpainter_${name}_optim.tgz" -C "$RUNS" $(cd "$RUNS" && ls "$name"/ckpt/last.optim.safetensors 2>/dev/null)
done
cp "$OUT/env.txt" "$RUNS/env.txt"
tar czf "$OUT/kernels.tgz" -C "$RUNS" $(cd "$RUNS" && ls env.txt build.log gpu_tests.log kernel_tests.log \
    bench_kernels.json bench_kernels.log bench_inpainter.json bench_inpainter.log bench_contextual_attention.json \
    bench_contextual_attention.log 2>/dev/null)
ls -la "$OUT"
for name in id noid; do
  $PY - "$RUNS/$name/eval.json" <<'EOF' 2>/dev/null
import json, sys
r = json.load(open(sys.argv[1]))
print(sys.argv[1], "steps", r["steps"], "psnr", round(r["psnr_hole"], 3), "ssim", round(r["ssim_hole"], 4),
      "telea", round(r["telea_psnr_hole"], 3), round(r["telea_ssim_hole"], 4), "s", r["train_seconds_this_run"])
EOF
done
tail -n 4 "$RUNS/gpu_tests.log" "$RUNS/kernel_tests.log" 2>/dev/null
log "done"
