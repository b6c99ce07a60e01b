"""What loading the knowledge pack costs: cold (read, sha256 check, parse) and warm (the process cache).

Every grounding step calls ``load_pack``; the warm call still reads pack.json (and each user GMT) to
key the cache by digest, so it should cost well under a millisecond against a cold load's fraction
of a second. Also times the first look-ups (they build the search indexes), making every gene set
(a loaded pack keeps its own sets as text until used; the round makes them while its GPU job runs),
and prints the sizes.

    .venv/bin/python -m benchmarks.pack [--repeat 5] [--pack-uri file:///...]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from clients.grounding_settings import DEFAULT_PACK_DIR
from clients.storage import local_path_of
from tasks.grounding.pack import clear_cache, load_pack

HALLMARK_LIKE = "".join(f"SET_{i}\tdesc\t" + "\t".join(f"G{i * 7 + j}" for j in range(100)) + "\n" for i in range(50))


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--pack-uri", default=DEFAULT_PACK_DIR.as_uri())
    args = parser.parse_args()

    folder = local_path_of(args.pack_uri)
    sizes = {p.name: p.stat().st_size for p in sorted(folder.glob("*")) if p.suffix in (".gz", ".json")}
    with tempfile.TemporaryDirectory() as tmp:
        gmt = Path(tmp) / "user.gmt"
        gmt.write_text(HALLMARK_LIKE)
        rows = []
        for label, uris in (("pack", []), ("pack + 50-set GMT", [gmt.as_uri()])):
            cold, warm, first_lookup, make_all = [], [], [], []
            for _ in range(args.repeat):
                clear_cache()
                cold.append(timed(lambda: load_pack(args.pack_uri, uris)))
                warm.append(min(timed(lambda: load_pack(args.pack_uri, uris)) for _ in range(20)))
                pack = load_pack(args.pack_uri, uris)
                first_lookup.append(timed(lambda: (pack.search_gene_sets("inflammatory response"),
                                                   pack.resolve_cell_type("CD14+ Monocyte"))))
                make_all.append(timed(pack.gene_sets.make_all))
            rows.append((label, *(statistics.median(v) for v in (cold, warm, first_lookup, make_all))))
    pack = load_pack(args.pack_uri)
    print(f"{pack.version}: {len(pack.gene_sets)} gene sets, {len(pack.cell_types)} cell types")
    for name, size in sizes.items():
        print(f"  {name}: {size / 1e6:.2f} MB")
    print(f"  total: {sum(sizes.values()) / 1e6:.2f} MB")
    print(f"median of {args.repeat} | cold ms | warm ms | warm / cold | first look-ups ms | all sets made ms")
    for label, cold, warm, lookup, made in rows:
        print(f"{label} | {cold * 1e3:.0f} | {warm * 1e3:.3f} | {warm / cold:.5f} | {lookup * 1e3:.0f} | {made * 1e3:.0f}")


if __name__ == "__main__":
    main()
