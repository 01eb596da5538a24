#!/usr/bin/env bash
# CPU: eager against torch.compile for both families, side by side in one run (issue 17 item 4).
#
#   bash benchmarks/cpu_compile_suite.sh OUTDIR        # from the repository root; PYTHON=.venv/bin/python
#
# 1. throughput.py --compile at the step-cost shape (tiny preset: L2 D128 H4; V 2048, T 128, batch 8): step
#    time eager and compiled per family (first_step_s = the compile time);
# 2. profile_step.py at that shape, eager and compiled per family: aten calls (and compiled kernels) per step;
# 3. throughput.py --compile at xxs (L6 D384 H6) with the same V, T and batch.
# Every JSON goes to OUTDIR; suite.log has the load average and one line per step.
set -u
out=${1:?usage: bash benchmarks/cpu_compile_suite.sh OUTDIR}
py=${PYTHON:-python3}
mkdir -p "$out"
log="$out/suite.log"
{ date -u; "$py" -c "import torch; print(torch.__version__)"; nproc; } >"$log"
shape=(--vocab 2048 --seq 128 --batch 8)
step() {  # step NAME CMD...
    local name=$1 t0
    shift
    t0=$(date +%s)
    "$@" >"$out/$name.json" 2>"$out/$name.err"
    echo "$name rc=$? wall=$(($(date +%s) - t0))s load=$(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$log"
}
step throughput_tiny "$py" benchmarks/throughput.py --sizes tiny "${shape[@]}" --compile --reps 7 --warmup 2 \
    --think-steps 0
for fam in transformer_pp ebt; do
    step "profile_${fam}_tiny_eager" "$py" benchmarks/profile_step.py --family "$fam" --size tiny "${shape[@]}" --top 10
    step "profile_${fam}_tiny_compiled" "$py" benchmarks/profile_step.py --family "$fam" --size tiny "${shape[@]}" \
        --top 10 --compile
done
step throughput_xxs "$py" benchmarks/throughput.py --sizes xxs "${shape[@]}" --compile --reps 3 --warmup 2 \
    --think-steps 0
