"""Which query cells a shard generates, which shard a task runs, and what a part must vouch for.

arc-stack's unmasking quantile is taken over all query cells of one generation call, so a shard
is a query set of its own: shard i is ``numpy.array_split(range(n_query), shard_count)[i]`` of the
filtered query cells, generated with the job's seed under every context. The same shard_count
therefore gives the same numbers whether the shards run one after another in one process or as
the parallel tasks of a Batch job that a merge joins. Pure functions: no I/O, no torch.
"""

from __future__ import annotations

from collections.abc import Mapping

from inference.contract import JobManifest, ShardInfo, StackJobSpec
from inference.data import InputError


def shard_bounds(n_query: int, shard_count: int) -> list[tuple[int, int]]:
    """[start, stop) of each shard's rows among ``n_query`` cells, as numpy.array_split cuts them
    (the first ``n_query % shard_count`` shards one row longer; shards past the cells empty)."""
    size, extra = divmod(n_query, shard_count)
    bounds, start = [], 0
    for i in range(shard_count):
        stop = start + size + (1 if i < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def parse_shards(text: str, shard_count: int) -> list[int]:
    """``--shards 0,2``: the shard indices a sharded job's tasks run, task k running the k-th."""
    try:
        shards = [int(part) for part in text.split(",")]
    except ValueError:
        raise InputError(f"--shards {text!r} is not a comma-separated list of shard indices; pass e.g. --shards 0,1,2") from None
    bad = [i for i in shards if not 0 <= i < shard_count]
    if bad:
        raise InputError(
            f"--shards names shard(s) {bad}, but the spec's shard_count is {shard_count} (shards 0..{shard_count - 1}); "
            "fix --shards or the spec's shard_count"
        )
    return shards


def task_shard(shards: list[int], env: Mapping[str, str], task_index_env: str) -> int:
    """The shard this task runs: ``shards[k]`` for k = ``env[task_index_env]`` (0 when unset)."""
    raw = env.get(task_index_env, "0")
    try:
        k = int(raw)
    except ValueError:
        raise InputError(f"{task_index_env}={raw!r} is not a task index; Batch sets it to 0, 1, ...") from None
    if not 0 <= k < len(shards):
        raise InputError(
            f"{task_index_env}={k}, but --shards lists {len(shards)} shard(s) {shards}: task k runs the k-th; "
            f"run the job with task_count={len(shards)}, or list a shard for this task"
        )
    return shards[k]


def same_job(part: StackJobSpec, spec: StackJobSpec) -> bool:
    """A part belongs to ``spec`` when every field but the output location is equal (a retried task
    writes under another attempt's prefix)."""
    return part.model_dump(exclude={"output_prefix"}) == spec.model_dump(exclude={"output_prefix"})


def check_part(manifest: JobManifest, spec: StackJobSpec, index: int, *, name: str) -> ShardInfo:
    """The checks a merge makes of part ``index``'s manifest that need no data: its shard and spec."""
    fix = f"rerun shard {index} of this spec (--shards {index}) and pass its part prefix"
    shard = manifest.shard
    if shard is None:
        raise InputError(f"{name}: its manifest is not a shard's part (no 'shard'); {fix}")
    if shard.index != index or shard.count != spec.shard_count:
        raise InputError(
            f"{name}: its manifest is shard {shard.index} of {shard.count}, but the merge lists it as shard "
            f"{index} of {spec.shard_count}; list the parts in shard order (parts[i] = shard i), or {fix}"
        )
    if not same_job(manifest.spec, spec):
        differ = sorted(
            k for k, v in manifest.spec.model_dump(exclude={"output_prefix"}).items() if getattr(spec, k) != v
        )
        raise InputError(f"{name}: it is a part of another job (its spec differs in {differ}); {fix}")
    return shard


def check_coverage(shard: ShardInfo, n_query: int, contexts: list[str], *, name: str, index: int) -> None:
    """Part ``index`` generated exactly its array_split rows of the filtered query, every context, in order."""
    expected = shard_bounds(n_query, shard.count)[index]
    fix = f"rerun shard {index} of this spec (--shards {index}) against the same inputs"
    if tuple(shard.query_cells) != expected:
        raise InputError(
            f"{name}: it generated query cells {list(shard.query_cells)}, but shard {index} of {shard.count} over the "
            f"{n_query} filtered query cells is {list(expected)} (were the inputs changed?); {fix}"
        )
    if list(shard.blocks) != contexts:
        raise InputError(f"{name}: its contexts {list(shard.blocks)} are not the job's {contexts}; {fix}")
    rows = expected[1] - expected[0]
    for k, value in enumerate(contexts):
        if tuple(shard.blocks[value]) != (k * rows, (k + 1) * rows):
            raise InputError(f"{name}: context {value!r} has rows {list(shard.blocks[value])}, not {rows} in order; {fix}")
