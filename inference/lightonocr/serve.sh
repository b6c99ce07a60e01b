#!/bin/bash
# Start vLLM's OpenAI server with LightOn's recommended flags for LightOnOCR-2-1B:
# one image per prompt, no multimodal processor cache and no prefix caching (every page is new).
# Extra arguments are passed to `vllm serve` (e.g. --max-num-seqs 128).
set -euo pipefail
# The weights are a local directory baked at one commit (fetch_model.sh): vLLM's --revision does not
# apply to a directory, so the commit is said here, once, for the logs.
echo "serve-lightonocr: ${SERVED_MODEL_NAME:-lightonai/LightOnOCR-2-1B} at revision $(cat "${MODEL_DIR:-/models/LightOnOCR-2-1B}/REVISION" 2>/dev/null || echo "${MODEL_REVISION:-unknown}")" >&2
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
