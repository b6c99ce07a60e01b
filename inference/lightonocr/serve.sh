#!/bin/bash
# Start vLLM's OpenAI server with LightOn's recommended flags for LightOnOCR-2-1B:
# one image per prompt, no multimodal processor cache and no prefix caching (every page is new).
# Extra arguments are passed to `vllm serve` (e.g. --max-num-seqs 128).
set -euo pipefail
exec vllm serve "${MODEL_DIR:-/models/LightOnOCR-2-1B}" \
  --served-model-name "${SERVED_MODEL_NAME:-lightonai/LightOnOCR-2-1B}" \
  --host 0.0.0.0 \
  --port "${PORT:-8000}" \
  --limit-mm-per-prompt '{"image": 1}' \
  --mm-processor-cache-gb 0 \
  --no-enable-prefix-caching \
  --max-num-seqs "${MAX_NUM_SEQS:-64}" \
  --gpu-memory-utilization "${GPU_MEMORY_UTILIZATION:-0.90}" \
  "$@"
