"""The LightOnOCR service image and deploy script say what the issue and LightOn require (checked offline)."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

SERVICE_DIR = Path(__file__).resolve().parents[2] / "inference" / "lightonocr"


REVISION = "0123456789abcdef0123456789abcdef01234567"  # a commit hash's shape; nothing is downloaded here


def dry_run(step: str, **env: str) -> list[str]:
    values = {
        "PATH": os.environ["PATH"], "PROJECT": "demo-project", "DRY_RUN": "1",
        "INVOKER": "worker@demo.iam.gserviceaccount.com", "MODEL_REVISION": REVISION, **env,
    }
    out = subprocess.run(
        ["bash", str(SERVICE_DIR / "deploy.sh"), step], env=values, capture_output=True, text=True, check=True
    ).stdout
    return shlex.split(out)


def fetch_model(revision: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "DRY_RUN": "1", "MODEL_DIR": "/models/x", "MODEL_REVISION": revision}
    return subprocess.run(["bash", str(SERVICE_DIR / "fetch_model.sh")], env=env, capture_output=True, text=True, check=False)


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
    assert "fetch-lightonocr-model" in dockerfile and "HF_HUB_OFFLINE=1" in dockerfile  # weights in the image
    assert "--limit-mm-per-prompt '{\"image\": 1}'" in serve
    assert "--mm-processor-cache-gb 0" in serve and "--no-enable-prefix-caching" in serve
    subprocess.run(["bash", "-n", str(SERVICE_DIR / "serve.sh")], check=True)


def test_the_model_is_downloaded_at_the_pinned_commit_and_the_image_says_which() -> None:
    dockerfile = (SERVICE_DIR / "Dockerfile").read_text()
    assert "\nARG MODEL_REVISION\n" in dockerfile  # no default: a branch would float
    assert "MODEL_REVISION=main" not in dockerfile
    assert 'MODEL_REVISION="${MODEL_REVISION}"' in dockerfile and "stackflows.model.revision=${MODEL_REVISION}" in dockerfile

    download = shlex.split(fetch_model(REVISION).stdout)

    assert download[0] == "python3" and "snapshot_download(sys.argv[1], revision=sys.argv[2]" in download[2]
    assert download[3:] == ["lightonai/LightOnOCR-2-1B", REVISION, "/models/x"]


def test_a_branch_or_no_revision_is_refused_saying_how_to_pick_a_commit() -> None:
    for revision in ("", "main", "v1.0", REVISION[:12]):
        refused = fetch_model(revision)
        assert refused.returncode == 2, revision
        assert "40-character commit hash" in refused.stderr and "git ls-remote" in refused.stderr
        assert refused.stdout == ""  # nothing was downloaded


def test_deploy_builds_with_the_revision_and_tags_the_image_with_it() -> None:
    words = dry_run("build")
    args = words[words.index("builds") - 1 :]  # the `gcloud builds submit` line (after the registry check)
    assert args[:3] == ["gcloud", "builds", "submit"] and "--tag" not in args  # --tag cannot pass build arguments
    assert args[args.index("--config") + 1].endswith("inference/lightonocr/cloudbuild.yaml")
    substitutions = dict(kv.split("=", 1) for kv in args[args.index("--substitutions") + 1].split(","))
    assert substitutions["_MODEL_REVISION"] == REVISION
    assert substitutions["_IMAGE"].endswith(f"/lightonocr:vllm0.30.0-tf5.16.1-{REVISION[:12]}")
    cloudbuild = (SERVICE_DIR / "cloudbuild.yaml").read_text()
    assert '"--build-arg", "MODEL_REVISION=${_MODEL_REVISION}"' in cloudbuild

    refused = subprocess.run(
        ["bash", str(SERVICE_DIR / "deploy.sh"), "build"],
        env={"PATH": os.environ["PATH"], "PROJECT": "demo-project", "DRY_RUN": "1"}, capture_output=True, text=True,
        check=False,
    )
    assert refused.returncode == 2 and "MODEL_REVISION" in refused.stderr


def test_serve_logs_the_baked_revision(tmp_path) -> None:
    (tmp_path / "REVISION").write_text(REVISION + "\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "vllm").write_text("#!/bin/sh\nexit 0\n")  # stands in for vLLM: the test only reads the log line
    (bin_dir / "vllm").chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "MODEL_DIR": str(tmp_path)}
    out = subprocess.run(["bash", str(SERVICE_DIR / "serve.sh")], env=env, capture_output=True, text=True, check=True)
    assert f"at revision {REVISION}" in out.stderr
