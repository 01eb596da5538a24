#!/usr/bin/env bash
# The GPU checks and benchmarks of one lease, each under its own time limit, results under OUTDIR.
#
#   bash benchmarks/gpu_suite.sh OUTDIR                     # from the repository root; PYTHON=python3
#   FULL=1 bash benchmarks/gpu_suite.sh OUTDIR              # also CUDA graphs, profiles, xxs (longer)
#   BASELINE=.bench_old FULL=1 bash benchmarks/gpu_suite.sh OUTDIR # also time another checkout side by side
#
# The default run fits in 8 minutes (its step limits add up to 480 s): the gpu-marked tests, the memory plan
# against CUDA peaks (issue 18), then the EBT eager against torch.compile (as ebt-scale train --compile) at
# `small`, bf16 autocast, batch 16 and 64: tokens/s and MFU per job, first_step_s = the compile time (issue 17).
# FULL=1 adds the T++ compiled, CUDA-graph replay, profiles (eager and compiled), xxs, and with BASELINE another
# tree's throughput.
#
# Needs only torch (+ Triton for compile) and pytest on the GPU machine: the benchmarks and tests/test_cuda.py
# import the model and training code, not the database or Ray, and the checkout is put on PYTHONPATH. BASELINE
# is a directory holding another revision's tree (e.g. `git archive REV | tar -x -C .bench_old`); its
# throughput runs right after this tree's, on the same machine. At most 8 files are written (what a device
# lease returns): suite.log (environment and one line per step), steps.log (every step's output and printed
# JSON), throughput JSONs and profiles. A step that fails or runs out of time is recorded and the next one
# runs. benchmarks/RESULTS.md (GPU figures) says what the figures mean.
set -u
out=${1:?usage: bash benchmarks/gpu_suite.sh OUTDIR}
py=${PYTHON:-python3}
root=$PWD
mkdir -p "$out"
export PYTHONUNBUFFERED=1
log="$out/suite.log"
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  "$py" -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.version.cuda)"; } >"$log" 2>&1
cat "$log"
: >"$out/steps.log"

step() {  # step NAME SECONDS DIR CMD... : run in DIR with a time limit; log rc and wall time
    local name=$1 limit=$2 dir=$3 t0 rc
    shift 3
    t0=$(date +%s)
    echo "===== $name" >>"$out/steps.log"
    (cd "$dir" && PYTHONPATH="$PWD" timeout "$limit" "$@") >>"$out/steps.log" 2>&1
    rc=$?
    echo "$name rc=$rc wall=$(($(date +%s) - t0))s" | tee -a "$log"
}

# Correctness first: if the lease runs out, the figures are what is lost. The gpu-marked tests: CUDA numerics and
# micro-batches on CUDA (torch only; the NCCL workers test skips on one GPU), and where the CLI's packages are
# installed the TF32 and calibration ones too.
gpu_tests=(tests/test_cuda.py tests/test_accumulate.py tests/test_distributed.py)
if "$py" -c "import typer, sqlalchemy" 2>/dev/null; then gpu_tests+=(tests/test_precision.py tests/test_calibrate.py); fi
step pytest_gpu 120 "$root" "$py" -m pytest -m gpu -q -p no:cacheprovider "${gpu_tests[@]}"
# Issue 18: the memory plan's estimate against torch.cuda.max_memory_allocated (xxs and small, batch 16 and 64).
step memory_cuda 80 "$root" "$py" benchmarks/memory_calibration.py --check-only --cuda --variants ebt_full \
    --precisions bf16 --out "$out/memory_cuda.json"
tp=(benchmarks/throughput.py --device cuda)
# Issue 17: the EBT eager vs compiled at small, bf16 (S1); eager and compiled jobs in their own processes, each
# job's line (tokens/s, MFU) in steps.log as it finishes, the JSON (with first_step_s, the compile time) at the end.
step compile_ebt_small_b16 180 "$root" "$py" "${tp[@]}" --sizes small --families ebt --compile --batch 16 \
    --reps 10 --warmup 3 --think-steps 0 --out "$out/compile_ebt_small_b16.json"
step compile_ebt_small_b64 100 "$root" "$py" "${tp[@]}" --sizes small --families ebt --compile --batch 64 \
    --reps 5 --warmup 2 --think-steps 0 --out "$out/compile_ebt_small_b64.json"
[ -n "${FULL:-}" ] || exit 0

if [ -n "${BASELINE:-}" ]; then
    # The launch-bound EBT batch-16 step is noisy between machine starts: alternate the two trees three times
    # on this machine (JSON in steps.log) so "before" and "after" see the same drift.
    for r in 1 2 3; do
        step "ab_ebt_small_b16_after_$r" 90 "$root" "$py" "${tp[@]}" --sizes small --families ebt --batch 16 --think-steps 0
        step "ab_ebt_small_b16_before_$r" 90 "$BASELINE" "$py" "${tp[@]}" --sizes small --families ebt --batch 16 \
            --think-steps 0
    done
fi
step throughput_b16 240 "$root" "$py" "${tp[@]}" --batch 16 --out "$out/throughput_b16.json"
if [ -n "${BASELINE:-}" ]; then
    step baseline_throughput_b16 240 "$BASELINE" "$py" "${tp[@]}" --batch 16 --out "$out/baseline_throughput_b16.json"
fi
step throughput_small_b64 150 "$root" "$py" "${tp[@]}" --sizes small --batch 64 --think-steps 0 \
    --out "$out/throughput_small_b64.json"
if [ -n "${BASELINE:-}" ]; then
    step baseline_throughput_small_b64 150 "$BASELINE" "$py" "${tp[@]}" --sizes small --batch 64 --think-steps 0 \
        --out "$out/baseline_throughput_small_b64.json"
fi
step throughput_graph_b16 180 "$root" "$py" "${tp[@]}" --batch 16 --cuda-graph --think-steps 0  # JSON in steps.log
# As ebt-scale train --cuda-graph runs (forward + backward + clipping replayed, AdamW eager): JSON in steps.log
step throughput_train_graph_b16 180 "$root" "$py" "${tp[@]}" --batch 16 --train-graph --think-steps 0
step throughput_graph_small_b64 120 "$root" "$py" "${tp[@]}" --sizes small --batch 64 --cuda-graph --think-steps 0
step profile_ebt_small 90 "$root" "$py" benchmarks/profile_step.py --family ebt --size small --device cuda \
    --batch 16 --out "$out/profile_ebt_small.json"
step compile_tpp_small_b16 240 "$root" "$py" "${tp[@]}" --sizes small --families transformer_pp --compile \
    --batch 16 --think-steps 0  # JSON in steps.log
step profile_ebt_small_compiled 240 "$root" "$py" benchmarks/profile_step.py --family ebt --size small --device cuda \
    --batch 16 --compile --out "$out/profile_ebt_small_compiled.json"
step profile_tpp_small 60 "$root" "$py" benchmarks/profile_step.py --family transformer_pp --size small \
    --device cuda --batch 16 --out "$out/profile_tpp_small.json"
