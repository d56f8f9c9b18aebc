#!/usr/bin/env bash
# The GPU checks of one device session, as one script (run from the repository root on a machine with
# one CUDA GPU; results under $OUT, default ./gpu_out):
#   1. the CUDA tests (vector env on CUDA against CPU);
#   2. issue 11: residual-EBM critics at the demo's batch size against weak and converged MLE policies,
#      and per-prompt reranking against n (benchmarks/critic_rerank.py --device cuda, 3 seeds, arithmetic
#      and python-lines);
#   3. the python-lines critic checkpoints (policy + critic, optimiser and noise pool stripped), packed
#      for PPO with the critic reward on a CPU (scripts/ppo_critic.py);
#   4. if time is left, the env throughput table with its CUDA rows (--quick).
# Packages the GPU image lacks (gymnasium, tyro, stable-baselines3, sb3-contrib and their pure-Python needs)
# travel as wheels in .whl/ (pip download --no-deps --only-binary=:all: --python-version 3.12 ...).
# Environment knobs (defaults = the first call of the session that made critic_rerank_gpu.md's first attempt):
# SKIP_CHECKS, CRITIC_STEPS, POOL, ABLATIONS, CRITIC_MINUTES, CRITIC_TIMEOUT, TOTAL_SECONDS.
# FSDP_ONLY=1: only the separate issue-23 step below (DDP vs FSDP2 tokens/s and peak memory, MLE on a random
# ~1.2B Llama on one GPU: benchmarks/fsdp_gpu.py; FSDP on one rank is a correctness check, not a speed claim).
set -uo pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
fi
T0=$(date +%s)
{ nvidia-smi -L; nproc; python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"; } \
    2>&1 | tee "$OUT/device.txt"

if [ -n "${FSDP_ONLY:-}" ]; then  # issue 23, a step of its own: DDP vs FSDP2 on one GPU, then exit
    echo "== FSDP: DDP vs FSDP2 (benchmarks/fsdp_gpu.py)"
    timeout "${FSDP_TIMEOUT:-560}" python3 benchmarks/fsdp_gpu.py --device cuda --nproc 1 --hidden 2048 --layers 24 \
        --dtype bfloat16 --batch-size 16 --steps 10 --warmup 3 --timeout 250 --out "$OUT" 2>&1 | tail -20
    cat "$OUT/fsdp_gpu.md" 2>/dev/null
    exit 0
fi

if [ -z "${SKIP_CHECKS:-}" ]; then  # SKIP_CHECKS=1: steps 2-3 only (a second call in the same session)
    echo "== 1. CUDA tests"
    timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_vector_env.py -k "cuda" 2>&1 | tail -5 | tee "$OUT/cuda_tests.txt"
fi

echo "== 2. critics and reranking ($(( $(date +%s) - T0 )) s)"
timeout "${CRITIC_TIMEOUT:-480}" python3 benchmarks/critic_rerank.py --device cuda --tasks arithmetic python-lines \
    --seeds 0 1 2 --jobs 18 --policy-steps 1500 --critic-steps "${CRITIC_STEPS:-3000}" --critic-batch-size 512 --critic-lr 6e-4 \
    --critic-warmup 200 --pool "${POOL:-50000}" --eval-every 250 --patience 1000 --critic-max-minutes "${CRITIC_MINUTES:-3}" \
    --ablations ${ABLATIONS-scratch} --candidates 1 4 16 64 --rerank-samples 512 --workdir /tmp/cr \
    --out "$OUT/critic_rerank_gpu" 2>&1 | grep -v Warning | tail -60

echo "== 3. pack ($(( $(date +%s) - T0 )) s)"
python3 - "$OUT" <<'EOF'
import sys, tarfile, torch, pathlib, io, json
out = pathlib.Path(sys.argv[1])
with tarfile.open(out / "critics.tar.gz", "w:gz") as tar:
    for run in sorted(pathlib.Path("/tmp/cr").glob("*/seed*/*")):
        for name in ("metrics.json", "config.json"):
            if (run / name).exists():
                tar.add(run / name, arcname=str(run.relative_to("/tmp/cr") / name))
        ck = run / "checkpoint.pt"
        if not ck.exists() or not (run.name == "critic_converged_default" and "python-lines" in str(run)):
            continue
        s = torch.load(ck, map_location="cpu", weights_only=True)
        keep = {k: s[k] for k in ("format", "agent", "task", "policy", "model", "config", "step")}
        keep["learner"] = {k: s["learner"][k] for k in ("critic_config", "critic")}
        buf = io.BytesIO()
        torch.save(keep, buf)
        info = tarfile.TarInfo(str(run.relative_to("/tmp/cr") / "checkpoint.pt"))
        info.size = buf.tell()
        buf.seek(0)
        tar.addfile(info, buf)
print((out / "critics.tar.gz").stat().st_size, "bytes packed")
EOF

echo "== 4. env throughput ($(( $(date +%s) - T0 )) s)"
left=$(( ${TOTAL_SECONDS:-540} - ($(date +%s) - T0) ))
if [ "$left" -gt 60 ] && [ -z "${SKIP_CHECKS:-}" ]; then
    timeout $(( left - 15 )) python3 benchmarks/env_throughput.py --quick --out "$OUT" 2>&1 | tail -25
fi
echo "== done ($(( $(date +%s) - T0 )) s)"
