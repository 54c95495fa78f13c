#!/usr/bin/env bash
# The GPU measurements of issues 6 and 7, each step sized for one 10-minute call of the
# `device` tool. Before the first call, here: ../shared/scripts/device-wheels  (fills .whl/)
# Then each call: carry [".whl"], command  `bash bench/gpu_run.sh STEP [ARG]`; results land in
# bench/results/ and bench/data/ there and are copied to $OUT (commit them from files_at).
#   suite NK        tuned/default/autotune/torch for M in 16,128,1024,4096 at N x K = NK
#                   (4096x4096, 14336x4096, 4096x14336), appended to bench/results/gpu_suite-<class>.json
#   sweep SHAPE     an exhaustive sweep of the bf16 matmul space, e.g. M=4096,N=4096,K=4096
#   throughput      harness vs serial triton.autotune, trials per minute (bench/throughput.py --device cuda)
#   replay          every strategy on every stored sweep (CPU work; may run here instead)
#   llm PART        issue 21: PART=lora (RANK=16 or 64): tuned multi-LoRA shrink/expand vs vLLM's
#                   default configurations on Llama-3-8B's projections, M=1..512; PART=attention:
#                   tuned flash attention vs scaled_dot_product_attention at HEAD_DIM 128
#                   (bench/llm_kernels.py; appended to bench/results/llm_kernels-<class>.json)
#   moe             issue 19: the fused MoE kernel tuned for Mixtral-8x7B at TP 1 (E=8,N=14336,K=4096,
#                   top-2, bf16) at BATCH_SIZES, against vLLM's shipped H100 file and the default
#                   (bench/moe_tuning_cost.py; TRIALS per batch size, 48 by default to fit one call)
#   moe-fp8         issue 27: the quantized fused MoE on the GPU. Each scheme (fp8_w8a8_block128,
#                   fp8_w8a8, int8_w8a16) tuned briefly for DeepSeek-V3's experts at TP 8 (E=256,N=256,
#                   K=7168, top-8) at M=16 through `tuner tune` (every trial checked against the
#                   dequantized reference: a wrong scale index is a wrong_result), exported with
#                   `tuner export --format vllm` (the file names land in $OUT/vllm-fp8.txt); then
#                   bench/moe_tuning_cost.py --kernel fused_moe_quant on Qwen3-30B-A3B-FP8 at TP 2
#                   (E=128,N=384), against vLLM's shipped H100 fp8 file (tests/data/vllm), TRIALS per M
#   moe-grid M      vLLM's full 1,920-point grid for one batch size beside the service: about 45
#                   minutes on an H100 by vLLM's own account, more than one call; where a GPU is held longer
#   check           issue 6 in one call: throughput (the >= 3x target), the GPU-only harness tests
#                   (CUDA events + L2 flush, graphs, rotation, crash recovery), and a short
#                   `tuner tune` on the GPU; each step under its own time limit, logs in $OUT;
#                   `rate` is bench/search_rate.py: the live search's trials/min and how much of
#                   it waits on the benchmark process; STEPS="... startup" adds bench/startup.py
#                   (the harness's start, pool of 8, side by side vs one after the other; a
#                   minute), "... workers" the throughput with a compile process per core, "... graph"
#                   a decode-sized bf16 matmul (M=16) tuned with eager event timing, then --cuda-graph
set -euo pipefail
cd "$(dirname "$0")/.."
# the project's packages import from the checkout (the bench scripts set no path of their own)
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PYTHONPATH
fi
unset TRITON_INTERPRET
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader || true
out=${OUT:-/tmp/out}; mkdir -p "$out"
case "${1:-}" in
  suite)
    nk=${2:?give N x K, e.g. 4096x4096}
    python3 bench/gpu_suite.py --device cuda:0 --trials "${TRIALS:-150}" --append \
      --shapes "16x$nk,128x$nk,1024x$nk,4096x$nk"
    cp bench/results/gpu_suite-*.json bench/results/gpu_suite-*.md "$out"/ ;;
  sweep)
    python3 bench/search_efficiency.py --record matmul --shape "${2:?give a shape}" --dtype bfloat16 \
      --device cuda:0 --rounds "${ROUNDS:-2}" 2>&1 | tee "$out/sweep.log" | tail -3
    cp "$(ls -t bench/data/sweep-*.json.gz | head -1)" "$out"/ ;;
  throughput)
    python3 bench/throughput.py --device cuda
    cp bench/results/throughput.json bench/results/throughput.md "$out"/ ;;
  llm)
    part=${2:?give lora or attention}
    timeout 570 python3 bench/llm_kernels.py --device cuda:0 --part "$part" --rank "${RANK:-16}" \
      --trials "${TRIALS:-40}" --append 2>&1 | tee "$out/llm_kernels-$part.log" | tail -40
    cp bench/results/llm_kernels-*.json bench/results/llm_kernels-*.md "$out"/ ;;
  moe)
    timeout "${MOE_S:-560}" python3 bench/moe_tuning_cost.py --device cuda:0 --trials "${TRIALS:-48}" \
      --batch-sizes "${BATCH_SIZES:-1,16,64,256,1024,4096}" 2>&1 | tee "$out/moe.log"
    cp bench/results/moe_tuning_cost-*.json bench/results/moe_tuning_cost-*.md "$out"/ ;;
  moe-fp8)
    export TUNER_HOME=/tmp/tuner-fp8 PYTHONUNBUFFERED=1; rc=0
    for dtype in fp8_w8a8_block128 fp8_w8a8 int8_w8a16; do
      timeout 100 python3 -m tuner.cli tune fused_moe_quant --shape E=256,N=256,K=7168,topk=8,M=16 --dtype "$dtype" \
        --trials "${QUANT_TRIALS:-12}" --device cuda 2>&1 | tee -a "$out/moe-fp8-tune.log" || rc=1
    done
    python3 -m tuner.cli export --format vllm -o "$out/vllm" && ls "$out/vllm" | tee "$out/vllm-fp8.txt" || rc=1
    timeout "${MOE_S:-240}" python3 bench/moe_tuning_cost.py --device cuda:0 --kernel fused_moe_quant \
      --dtype fp8_w8a8_block128 --key '{"E": 128, "N": 384, "K": 2048, "topk": 8}' --trials "${TRIALS:-24}" \
      --vllm-file "tests/data/vllm/E=128,N=384,device_name=NVIDIA_H100,dtype=fp8_w8a8,block_shape=[128,128].json" \
      --batch-sizes "${BATCH_SIZES:-1,64,1024}" --out bench/results/moe_tuning_cost-fp8 2>&1 | tee "$out/moe-fp8.log" || rc=1
    cp bench/results/moe_tuning_cost-fp8.* "$out"/ 2>/dev/null || true
    exit $rc ;;
  moe-grid)
    m=${2:?give a batch size, e.g. 16}
    python3 bench/moe_tuning_cost.py --device cuda:0 --trials 96 --batch-sizes "$m" --grid-batch-sizes "$m" \
      --out "bench/results/moe_tuning_cost-grid-$m" 2>&1 | tee "$out/moe-grid.log"
    cp bench/results/moe_tuning_cost-grid-* "$out"/ ;;
  replay)
    python3 bench/search_efficiency.py --replay --seeds 50
    cp bench/results/search_efficiency.json bench/results/search_efficiency.md "$out"/ ;;
  check)  # STEPS picks among: tests throughput workers startup tune graph rate (default: tests throughput tune rate)
    export PYTHONUNBUFFERED=1 TUNER_HOME=/tmp/tuner-home
    steps=" ${STEPS:-tests throughput tune rate} "; rc=0
    if [[ $steps == *" tests "* ]]; then
      timeout 300 python3 -m pytest -q -p no:cacheprovider -rA --tb=short --timeout 90 -s \
        tests/test_harness.py -k gpu 2>&1 | tee "$out/gpu_tests.log" || rc=1
    fi
    if [[ $steps == *" throughput "* ]]; then
      timeout "${THROUGHPUT_S:-330}" python3 bench/throughput.py --device cuda --rounds "${ROUNDS:-2}" \
        --methods "${METHODS:-harness_run_many,harness_run_many_early_stop,autotune,bare}" --timeout 150 \
        2>&1 | tee "$out/throughput.log" || rc=1
    fi
    if [[ $steps == *" workers "* ]]; then  # the compile pool at one process a core but two
      n=$(( $(nproc) - 2 ))
      timeout 150 python3 bench/throughput.py --device cuda --rounds "${ROUNDS:-2}" --compile-workers "$n" \
        --tag "$n compile processes" --methods harness_run_many,harness_run_many_early_stop --timeout 100 \
        2>&1 | tee "$out/throughput-workers.log" || rc=1
    fi
    cp bench/results/throughput.json bench/results/throughput.md "$out"/ 2>/dev/null || true
    if [[ $steps == *" startup "* ]]; then
      timeout 120 python3 bench/startup.py --device cuda:0 --pools 8 --rounds 2 2>&1 | tee "$out/startup.log" || rc=1
      cp bench/results/startup.md "$out"/ 2>/dev/null || true
    fi
    if [[ $steps == *" tune "* ]]; then
      timeout 150 python3 -m tuner.cli tune matmul --shape M=4096,N=4096,K=4096 --dtype float16 \
        --trials 40 --device cuda 2>&1 | tee "$out/tune.log" || rc=1
    fi
    if [[ $steps == *" graph "* ]]; then  # a decode-sized matmul, where the launch is much of the time
      for how in "" "--cuda-graph"; do  # events around eager launches, then graph replays (own study)
        timeout 120 python3 -m tuner.cli tune matmul --shape M=16,N=4096,K=4096 --dtype bfloat16 --trials 24 \
          --device cuda $how 2>&1 | tee -a "$out/graph.log" || rc=1
      done
    fi
    if [[ $steps == *" rate "* ]]; then
      timeout 120 python3 bench/search_rate.py --device cuda:0 --trials 40 --rounds 1 2>&1 | tee "$out/rate.log" || rc=1
      cp bench/results/search_rate.md "$out"/ 2>/dev/null || true
    fi
    exit $rc ;;
  *) echo "usage: bash bench/gpu_run.sh suite NK | sweep SHAPE | throughput | replay | check | llm lora|attention | moe | moe-fp8 | moe-grid M" >&2; exit 2 ;;
esac
