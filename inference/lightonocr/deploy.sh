#!/bin/bash
# Build the LightOnOCR image and deploy it as a private Cloud Run service with one NVIDIA L4 GPU.
#
#   PROJECT=my-project REGION=europe-west4 MODEL_REVISION=<40-hex commit of the model> \
#     INVOKER=flow-runs@my-project.iam.gserviceaccount.com \
#     inference/lightonocr/deploy.sh            # build + deploy + grant + print the URL
#   inference/lightonocr/deploy.sh deploy       # one step: build | deploy | grant | url
#   DRY_RUN=1 inference/lightonocr/deploy.sh    # print the commands instead of running them
#
# Then: export STACKFLOWS_OCR__SERVICE_URL=$(inference/lightonocr/deploy.sh url)
# Needs Cloud Run GPU quota in REGION (docs/ocr.md: "Quota").
set -euo pipefail

PROJECT="${PROJECT:-$(gcloud config get-value project 2>/dev/null || true)}"
REGION="${REGION:-europe-west4}"
SERVICE="${SERVICE:-lightonocr}"
REPOSITORY="${REPOSITORY:-stackflows}"
MODEL_REVISION="${MODEL_REVISION:-}"   # commit of lightonai/LightOnOCR-2-1B baked into the image (docs/ocr.md)
TAG="${TAG:-vllm0.30.0-tf5.16.1${MODEL_REVISION:+-${MODEL_REVISION:0:12}}}"
IMAGE="${IMAGE:-${REGION}-docker.pkg.dev/${PROJECT}/${REPOSITORY}/lightonocr:${TAG}}"
RUNTIME_SA="${RUNTIME_SA:-}"            # the service's own identity (needs no roles to serve)
INVOKER="${INVOKER:-}"                  # who calls it: the flow-run job's service account (OCR runs in the flow run)
MAX_INSTANCES="${MAX_INSTANCES:-3}"
CONCURRENCY="${CONCURRENCY:-64}"        # requests per instance; vLLM batches them on the GPU
TIMEOUT="${TIMEOUT:-900}"               # seconds per request, including waiting for a cold start

if [[ -z "${PROJECT}" ]]; then
  echo "deploy.sh: set PROJECT (or gcloud config set project ...)" >&2
  exit 2
fi

run() {
  if [[ -n "${DRY_RUN:-}" ]]; then
    printf '%q ' "$@"; echo
  else
    "$@"
  fi
}

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

build() {
  if [[ ! "${MODEL_REVISION}" =~ ^[0-9a-f]{40}$ ]]; then
    echo "deploy.sh: set MODEL_REVISION to a 40-character commit hash of lightonai/LightOnOCR-2-1B (got '${MODEL_REVISION}');" >&2
    echo "  pick it with: git ls-remote https://huggingface.co/lightonai/LightOnOCR-2-1B refs/heads/main" >&2
    exit 2
  fi
  # The image is ~10 GB (CUDA, vLLM, weights): build it on Cloud Build, next to the registry.
  run gcloud artifacts repositories describe "${REPOSITORY}" --project "${PROJECT}" --location "${REGION}" \
    >/dev/null 2>&1 || run gcloud artifacts repositories create "${REPOSITORY}" --project "${PROJECT}" \
    --location "${REGION}" --repository-format docker
  run gcloud builds submit "${here}" --project "${PROJECT}" --region "${REGION}" \
    --config "${here}/cloudbuild.yaml" --substitutions "_IMAGE=${IMAGE},_MODEL_REVISION=${MODEL_REVISION}" \
    --machine-type e2-highcpu-8 --disk-size 200 --timeout 3600s
}

deploy() {
  local args=(
    gcloud run deploy "${SERVICE}"
    --project "${PROJECT}" --region "${REGION}" --image "${IMAGE}"
    --gpu 1 --gpu-type nvidia-l4 --no-gpu-zonal-redundancy
    --cpu 8 --memory 32Gi --no-cpu-throttling
    --min-instances 0 --max-instances "${MAX_INSTANCES}"
    --concurrency "${CONCURRENCY}" --timeout "${TIMEOUT}"
    --port 8000
    --no-allow-unauthenticated
    # vLLM answers /health once the model is on the GPU; give a cold start up to ~10 minutes.
    --startup-probe "httpGet.path=/health,httpGet.port=8000,initialDelaySeconds=10,periodSeconds=10,timeoutSeconds=5,failureThreshold=60"
    --liveness-probe "httpGet.path=/health,httpGet.port=8000,periodSeconds=30,timeoutSeconds=5,failureThreshold=3"
    --labels "app=stackflows,component=lightonocr"
  )
  if [[ -n "${RUNTIME_SA}" ]]; then
    args+=(--service-account "${RUNTIME_SA}")
  fi
  run "${args[@]}"
}

grant() {
  if [[ -z "${INVOKER}" ]]; then
    echo "deploy.sh: INVOKER unset; grant a caller later with:" >&2
    echo "  gcloud run services add-iam-policy-binding ${SERVICE} --region ${REGION} --member serviceAccount:SA_EMAIL --role roles/run.invoker" >&2
    return 0
  fi
  run gcloud run services add-iam-policy-binding "${SERVICE}" --project "${PROJECT}" --region "${REGION}" \
    --member "serviceAccount:${INVOKER}" --role roles/run.invoker
}

url() {
  run gcloud run services describe "${SERVICE}" --project "${PROJECT}" --region "${REGION}" \
    --format 'value(status.url)'
}

case "${1:-all}" in
  build) build ;;
  deploy) deploy ;;
  grant) grant ;;
  url) url ;;
  all) build; deploy; grant; url ;;
  *) echo "usage: deploy.sh [build|deploy|grant|url|all]" >&2; exit 2 ;;
esac
