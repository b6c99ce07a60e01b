"""The LightOnOCR service image and deploy script say what the issue and LightOn require (checked offline)."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

SERVICE_DIR = Path(__file__).resolve().parents[2] / "inference" / "lightonocr"


def dry_run(step: str) -> list[str]:
    env = {"PATH": os.environ["PATH"], "PROJECT": "demo-project", "DRY_RUN": "1", "INVOKER": "worker@demo.iam.gserviceaccount.com"}
    out = subprocess.run(
        ["bash", str(SERVICE_DIR / "deploy.sh"), step], env=env, capture_output=True, text=True, check=True
    ).stdout
    return shlex.split(out)


def test_deploy_asks_for_one_l4_private_scale_to_zero_service() -> None:
    args = dry_run("deploy")
    flags = " ".join(args)
    assert args[:3] == ["gcloud", "run", "deploy"]
    for expected in [
        "--gpu 1", "--gpu-type nvidia-l4", "--cpu 8", "--memory 32Gi", "--no-cpu-throttling",
        "--min-instances 0", "--max-instances 3", "--no-allow-unauthenticated", "--port 8000",
    ]:
        assert expected in flags
    assert "--allow-unauthenticated" not in args
    assert "httpGet.path=/health" in args[args.index("--startup-probe") + 1]


def test_grant_gives_the_caller_run_invoker() -> None:
    args = dry_run("grant")
    assert args[:4] == ["gcloud", "run", "services", "add-iam-policy-binding"]
    assert "roles/run.invoker" in args and "serviceAccount:worker@demo.iam.gserviceaccount.com" in args


def test_image_pins_lighton_versions_bakes_the_model_and_serves_with_their_flags() -> None:
    dockerfile = (SERVICE_DIR / "Dockerfile").read_text()
    serve = (SERVICE_DIR / "serve.sh").read_text()
    assert "ARG VLLM_VERSION=0.30.0" in dockerfile and "vllm/vllm-openai:v${VLLM_VERSION}" in dockerfile
    assert "ARG TRANSFORMERS_VERSION=5.16.1" in dockerfile
    assert "snapshot_download" in dockerfile and "HF_HUB_OFFLINE=1" in dockerfile  # weights in the image
    assert "--limit-mm-per-prompt '{\"image\": 1}'" in serve
    assert "--mm-processor-cache-gb 0" in serve and "--no-enable-prefix-caching" in serve
    subprocess.run(["bash", "-n", str(SERVICE_DIR / "serve.sh")], check=True)
