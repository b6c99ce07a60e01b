"""GPU batch job settings (``STACKFLOWS_BATCH__*``).

The first block picks where jobs run and how the flow waits for them; ``local_*`` configure the
embedded process runner; the rest describe the Google Cloud Batch job (only read when
``backend`` is ``cloud``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

# Global concurrency limit a run holds a slot of while its GPU job exists (created by deployments.setup).
GPU_CONCURRENCY_LIMIT = "stackflows-gpu-jobs"


class BatchSettings(BaseModel):
    backend: Literal["local", "cloud"] = Field(
        default="local", description="local: a process on this machine; cloud: Google Cloud Batch."
    )

    # How the flow waits.
    poll_initial_s: float = Field(default=1.0, gt=0, description="First wait between status polls.")
    poll_max_s: float = Field(default=30.0, gt=0, description="Longest wait between status polls (backoff cap).")
    wait_timeout_s: float = Field(
        default=6 * 3600.0,
        gt=0,
        description="Give up waiting (and cancel the job) after this long; keep above max_run_duration_s.",
    )
    result_storage: str | None = Field(
        default=None,
        description=(
            "Prefect block slug (e.g. gcs-bucket/stackflows-results) where a run persists its task results "
            "(staged inputs, plan, GPU job id), so a Retry on any worker skips what is done. "
            "Unset: <data_dir>/prefect-results (one machine)."
        ),
    )

    # Local process runner.
    local_python: str | None = Field(
        default=None,
        description=(
            "Interpreter that stands for `python` in the job command (e.g. a venv with CUDA torch). "
            "Unset: the interpreter running the flow."
        ),
    )

    # Google Cloud Batch.
    project: str | None = Field(default=None, description="GCP project that runs the Batch jobs.")
    region: str = Field(default="us-central1", description="Batch location (region) for the jobs.")
    image: str = Field(
        default="us-docker.pkg.dev/PROJECT/stackflows/stack-job:latest",
        description="Container image with the stackflows package and its [inference] extra installed.",
    )
    machine_type: str = Field(default="g2-standard-8", description="Compute Engine machine type of the job VM.")
    cpu_machine_type: str = Field(
        default="n2-highmem-8",
        description=(
            "Machine type of the jobs that need no GPU: a sharded job's merge (it reads two contexts' "
            "predictions of every query cell at once, sparse: highmem)."
        ),
    )
    accelerator_type: str | None = Field(
        default="nvidia-l4", description="GPU type (nvidia-l4, nvidia-tesla-a100, ...); None for a CPU job."
    )
    accelerator_count: int = Field(default=1, ge=0, description="GPUs per job VM.")
    boot_disk_gb: int = Field(default=100, ge=30, description="Boot disk size; the image and model cache live here.")
    boot_disk_type: str | None = Field(
        default=None,
        description=(
            "Boot disk type (pd-balanced, pd-ssd, hyperdisk-balanced, ...). None: hyperdisk-balanced for the "
            "Hyperdisk-only machine series (A4, A4X, A3 Ultra, G4, C4, N4, ...), else Batch's default."
        ),
    )
    spot: bool = Field(default=False, description="Use Spot VMs (cheaper; preempted jobs fail with exit code 50001).")
    max_preemption_retries: int = Field(
        default=3,
        ge=0,
        description=(
            "How many times a run submits a new attempt by itself after its job was preempted (exit codes "
            "50001-50004, 50006); 0: a preemption fails the run until someone presses Retry."
        ),
    )
    shard_cells: int | None = Field(
        default=200_000,
        ge=1,
        description=(
            "Query cells per shard: a job whose query has more cells is split into ceil(cells / shard_cells) "
            "shards, run as the tasks of one Batch job (parallel processes locally) and merged into one set of "
            "outputs. The default keeps a shard well inside a g2-standard-8 host with the released model "
            "(benchmarks/README.md, Scale). None: never shard."
        ),
    )
    max_parallel_shards: int = Field(
        default=2,
        ge=1,
        description=(
            "At most this many shard tasks (GPUs) at once (Batch parallelism); a sharded run holds that many "
            "slots of the stackflows-gpu-jobs concurrency limit, so keep it within the limit's slots."
        ),
    )
    merge_timeout_s: int = Field(
        default=3600,
        ge=60,
        description=(
            "Batch stops a sharded job's merge (a CPU job on a standard VM, never Spot) after this long; the "
            "flow waits for it this long plus the GPU jobs' queue allowance (wait_timeout_s - max_run_duration_s)."
        ),
    )
    max_run_duration_s: int = Field(default=4 * 3600, ge=60, description="Batch kills the task after this long.")
    service_account: str | None = Field(
        default=None, description="Service account email of the job VM (needs storage access to the inputs/outputs)."
    )
    network: str | None = Field(default=None, description="VPC network (projects/P/global/networks/N); None: default.")
    subnetwork: str | None = Field(default=None, description="Subnetwork (projects/P/regions/R/subnetworks/S).")
    no_external_ip: bool = Field(default=False, description="VMs without external IPs (needs Cloud NAT / private access).")
    gcs_mount_bucket: str | None = Field(
        default=None,
        description=(
            "Bucket to gcsfuse-mount read-write at /mnt/disks/<bucket> in the container; None: no mount (the "
            "job reads and writes gs:// through the storage client, so it needs none)."
        ),
    )
    capture_stderr: bool = Field(
        default=True,
        description=(
            "Run the job under clients.batch.job_wrapper so the tail of its stderr is written next to the "
            "outputs (job_stderr.txt) and failures show it; needs the stackflows package in the image."
        ),
    )
    def wait_timeout_for(self, gpu: bool) -> float:
        """How long the flow waits for a job: wait_timeout_s for a GPU job; for a CPU job (a merge) its
        run limit plus the same allowance for Batch's queue as a GPU job gets."""
        if gpu:
            return self.wait_timeout_s
        return self.merge_timeout_s + max(0.0, self.wait_timeout_s - self.max_run_duration_s)

    api_endpoint: str | None = Field(
        default=None, description="Batch API endpoint override (a local fake in tests); None: the Google endpoint."
    )
    anonymous_credentials: bool = Field(
        default=False, description="Use anonymous credentials (only for a local fake API)."
    )
