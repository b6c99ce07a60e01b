#!/bin/bash
# Download the LightOnOCR weights at one pinned commit into MODEL_DIR (run at image build time).
#
#   MODEL_ID=lightonai/LightOnOCR-2-1B MODEL_REVISION=<40-hex commit> MODEL_DIR=/models/x fetch_model.sh
#   DRY_RUN=1 ...   prints the download command instead of running it
#
# Only a commit hash is accepted: a branch ("main") or tag moves, so two builds of the same image
# tag could serve different weights. docs/ocr.md ("Pinning the model") says how to pick the hash.
set -euo pipefail

MODEL_ID="${MODEL_ID:-lightonai/LightOnOCR-2-1B}"
MODEL_DIR="${MODEL_DIR:?fetch_model.sh: set MODEL_DIR (where the weights go)}"
rev="${MODEL_REVISION:-}"

if [[ ! "${rev}" =~ ^[0-9a-f]{40}$ ]]; then
  cat >&2 <<MSG
fetch_model.sh: MODEL_REVISION must be a 40-character commit hash of ${MODEL_ID}, got '${rev}'.
A branch or tag moves, so the image would not say which weights it serves. Pick the commit with
  git ls-remote https://huggingface.co/${MODEL_ID} refs/heads/main
(or the "History" tab of the model page), then build with --build-arg MODEL_REVISION=<hash>
(deploy.sh: MODEL_REVISION=<hash> inference/lightonocr/deploy.sh).
MSG
  exit 2
fi

download=(python3 -c 'import sys; from huggingface_hub import snapshot_download; snapshot_download(sys.argv[1], revision=sys.argv[2], local_dir=sys.argv[3])' "${MODEL_ID}" "${rev}" "${MODEL_DIR}")
if [[ -n "${DRY_RUN:-}" ]]; then
  printf '%q ' "${download[@]}"; echo
  exit 0
fi
"${download[@]}"
echo "${rev}" > "${MODEL_DIR}/REVISION"  # serve.sh logs it; `docker inspect` shows the label too
