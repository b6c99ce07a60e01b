"""Build the knowledge pack (GO BP gene sets, the Cell Ontology) from the packages that ship them.

Offline except the package registries: GO.db and org.Hs.eg.db come as Debian packages
(``apt-get download`` + ``dpkg -x``; their SQLite files are read with ``sqlite3``, no R), the Cell
Ontology as the JSON that PyPI's ``cellxgene-ontology-guide`` installs. The outputs are gzip with
mtime 0 and sorted content, so a rebuild from the same sources is byte-identical and the digests in
``pack.json`` stay put::

    python -m deployments.knowledge_pack build [--out deployments/knowledge] [--debs DIR]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import re
import sqlite3
import subprocess
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

PACK_FORMAT = "pack-1"
DEFAULT_OUT = Path(__file__).resolve().parent / "knowledge"
GO_FILE = "go_bp.gmt.gz"
CL_FILE = "cell_ontology.json.gz"
MANIFEST = "pack.json"
GO_DEB = "r-bioc-go.db"
ORG_DEB = "r-bioc-org.hs.eg.db"
# Sizes kept: 5 is the smallest set enrichment can use; 2000 keeps broad processes such as
# "inflammatory response" (~850 genes) while the gzip stays under 2 MB (only the root-like sets go).
MIN_GENES = 5
MAX_GENES = 2000
REBUILD = "python -m deployments.knowledge_pack build"


class PackBuildError(RuntimeError):
    """A source the build cannot obtain or read; the message says which and what to do."""


@dataclass(frozen=True)
class Deb:
    """One downloaded Debian package and the R package inside it."""

    path: Path
    sha256: str
    root: Path  # where ``dpkg -x`` put its files
    description: dict[str, str]  # the R package's DESCRIPTION fields


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def gzip_bytes(data: bytes) -> bytes:
    """gzip with no timestamp and no file name, so equal input gives equal bytes."""
    return gzip.compress(data, compresslevel=9, mtime=0)


def _run(cmd: list[str], cwd: Path | None = None) -> None:
    try:
        subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True)
    except FileNotFoundError as exc:
        raise PackBuildError(f"{cmd[0]} is not installed; the build needs Debian's apt-get and dpkg") from exc
    except subprocess.CalledProcessError as exc:
        raise PackBuildError(
            f"`{' '.join(cmd)}` failed ({exc.returncode}): {exc.stderr.strip()[-500:]}"
            + ("; run `apt-get update` first, or pass --debs DIR holding the .deb files" if cmd[0] == "apt-get" else "")
        ) from exc


def find_deb(directory: Path, package: str) -> Path:
    """The one ``<package>_*.deb`` in ``directory``; an error naming what is there otherwise."""
    found = sorted(directory.glob(f"{package}_*.deb"))
    if len(found) != 1:
        have = ", ".join(p.name for p in sorted(directory.glob("*.deb"))) or "no .deb files"
        raise PackBuildError(
            f"{directory}: expected one {package}_*.deb, found {len(found)} ({have}); "
            f"download it with `apt-get download {package}` there, or leave out --debs"
        )
    return found[0]


def parse_description(text: str) -> dict[str, str]:
    """An R DESCRIPTION file (Debian control syntax) as a dict; continuation lines joined."""
    fields: dict[str, str] = {}
    key = ""
    for line in text.splitlines():
        if line[:1].isspace() and key:
            fields[key] += " " + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            key = key.strip()
            fields[key] = value.strip()
    return fields


def extract_deb(deb: Path, into: Path, r_package: str) -> Deb:
    root = into / deb.stem
    root.mkdir(parents=True)
    _run(["dpkg", "-x", str(deb), str(root)])
    description = root / "usr/lib/R/site-library" / r_package / "DESCRIPTION"
    if not description.is_file():
        raise PackBuildError(f"{deb}: no {r_package}/DESCRIPTION inside; is it the right package?")
    return Deb(deb, sha256_file(deb), root, parse_description(description.read_text(encoding="utf-8")))


def sqlite_of(deb: Deb, r_package: str, name: str) -> sqlite3.Connection:
    path = deb.root / "usr/lib/R/site-library" / r_package / "extdata" / name
    if not path.is_file():
        raise PackBuildError(f"{deb.path}: no extdata/{name} inside")
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def go_bp_gmt(go: sqlite3.Connection, org: sqlite3.Connection, min_genes: int, max_genes: int) -> tuple[bytes, int]:
    """GO BP sets as GMT text: annotations propagated to ancestors (go_bp_all), human symbols."""
    names = dict(go.execute("SELECT go_id, term FROM go_term WHERE ontology = 'BP'"))
    genes: dict[str, set[str]] = defaultdict(set)
    rows = org.execute("SELECT DISTINCT a.go_id, g.symbol FROM go_bp_all a JOIN gene_info g ON a._id = g._id")
    for go_id, symbol in rows:
        genes[go_id].add(symbol.strip().upper())
    lines = []
    for go_id in sorted(genes):
        if go_id in names and min_genes <= len(genes[go_id]) <= max_genes:
            name = " ".join(names[go_id].split())  # GMT fields cannot hold tabs or newlines
            lines.append("\t".join([go_id, name, *sorted(genes[go_id])]))
    return ("\n".join(lines) + "\n").encode("utf-8"), len(lines)


def ontology_file() -> tuple[Path, str, str]:
    """The installed Cell Ontology JSON (the guide's latest CL version), its version and the guide's."""
    try:
        import cellxgene_ontology_guide
        from importlib.metadata import version
    except ImportError as exc:
        raise PackBuildError("cellxgene-ontology-guide is not installed; `pip install cellxgene-ontology-guide`") from exc
    data = Path(cellxgene_ontology_guide.__file__).parent / "data"
    info = data / "latest_ontology_info.json"
    cl_version = ""
    if info.is_file():
        cl_version = json.loads(info.read_text())["ontologies"].get("CL", {}).get("version", "")
    path = data / f"CL-ontology-{cl_version}.json.zst"
    if not path.is_file():  # no info file, or it names a file not shipped: take the newest shipped
        shipped = sorted(data.glob("CL-ontology-*.json.zst"))
        if not shipped:
            raise PackBuildError(f"{data}: no CL-ontology-*.json.zst; reinstall cellxgene-ontology-guide")
        path = shipped[-1]
        cl_version = re.sub(r"^CL-ontology-|\.json\.zst$", "", path.name)
    return path, cl_version, version("cellxgene-ontology-guide")


def cell_ontology_json(path: Path, cl_version: str) -> tuple[bytes, int]:
    """Labels, synonyms and ancestors (nearest first) of every term that is not deprecated."""
    import zstandard

    with open(path, "rb") as fh:
        raw = json.loads(zstandard.ZstdDecompressor().stream_reader(fh).read())
    live = {term_id: term for term_id, term in raw.items() if not term.get("deprecated")}
    terms = {}
    for term_id in sorted(live):
        term = live[term_id]
        ancestors = sorted(
            (distance, ancestor) for ancestor, distance in term.get("ancestors", {}).items() if ancestor in live
        )
        terms[term_id] = {
            "label": term["label"],
            "synonyms": sorted(set(term.get("synonyms", []))),
            "ancestors": [ancestor for _, ancestor in ancestors],
        }
    doc = {"ontology": "CL", "version": cl_version, "terms": terms}
    return json.dumps(doc, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8"), len(terms)


def obtain_debs(debs_dir: Path | None, workdir: Path) -> tuple[Path, Path]:
    if debs_dir is None:
        debs_dir = workdir / "debs"
        debs_dir.mkdir()
        _run(["apt-get", "download", GO_DEB, ORG_DEB], cwd=debs_dir)
    return find_deb(debs_dir, GO_DEB), find_deb(debs_dir, ORG_DEB)


def build(out: Path, debs_dir: Path | None = None, *, min_genes: int = MIN_GENES, max_genes: int = MAX_GENES) -> dict:
    """Build the pack into ``out`` (files replaced) and return the manifest written as pack.json."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="knowledge-pack-") as tmp:
        work = Path(tmp)
        go_deb_path, org_deb_path = obtain_debs(debs_dir, work)
        go_deb = extract_deb(go_deb_path, work / "x", "GO.db")
        org_deb = extract_deb(org_deb_path, work / "x", "org.Hs.eg.db")
        go_db = sqlite_of(go_deb, "GO.db", "GO.sqlite")
        org_db = sqlite_of(org_deb, "org.Hs.eg.db", "org.Hs.eg.sqlite")
        try:
            go_meta = dict(go_db.execute("SELECT name, value FROM metadata"))
            gmt, n_sets = go_bp_gmt(go_db, org_db, min_genes, max_genes)
        finally:
            go_db.close()
            org_db.close()
    cl_path, cl_version, guide_version = ontology_file()
    ontology, n_terms = cell_ontology_json(cl_path, cl_version)

    derived = {GO_FILE: gzip_bytes(gmt), CL_FILE: gzip_bytes(ontology)}
    for name, data in derived.items():
        tmp_path = out / f".{name}.tmp"
        tmp_path.write_bytes(data)
        tmp_path.replace(out / name)
    go_date = go_meta.get("GOSOURCEDATE", "")
    manifest = {
        "format": PACK_FORMAT,
        "built_by": REBUILD,
        "gene_set_sizes": {"min": min_genes, "max": max_genes},
        "sources": [
            {
                "name": "GO.db",
                "version": go_deb.description.get("Version", ""),
                "data_version": f"Gene Ontology {go_date}",
                "file": go_deb.path.name,
                "sha256": go_deb.sha256,
                "licence": f"{go_deb.description.get('License', 'Artistic-2.0')} (package); GO data CC BY 4.0",
                "url": "https://bioconductor.org/packages/GO.db/",
            },
            {
                "name": "org.Hs.eg.db",
                "version": org_deb.description.get("Version", ""),
                "data_version": f"Entrez Gene {go_meta.get('GOEGSOURCEDATE', '')}, GO {go_date}",
                "file": org_deb.path.name,
                "sha256": org_deb.sha256,
                "licence": f"{org_deb.description.get('License', 'Artistic-2.0')} (package); GO annotations CC BY 4.0",
                "url": "https://bioconductor.org/packages/org.Hs.eg.db/",
            },
            {
                "name": "Cell Ontology (cellxgene-ontology-guide)",
                "version": cl_version,
                "data_version": f"cellxgene-ontology-guide {guide_version}",
                "file": cl_path.name,
                "sha256": sha256_file(cl_path),
                "licence": "CC BY 4.0 (Cell Ontology); MIT (cellxgene-ontology-guide)",
                "url": f"https://github.com/obophenotype/cell-ontology/releases/tag/{cl_version}",
            },
        ],
        "files": [
            {
                "name": GO_FILE,
                "kind": "gene_sets",
                "collection": "GO BP",
                "sets": n_sets,
                "sha256": hashlib.sha256(derived[GO_FILE]).hexdigest(),
            },
            {
                "name": CL_FILE,
                "kind": "cell_ontology",
                "terms": n_terms,
                "sha256": hashlib.sha256(derived[CL_FILE]).hexdigest(),
            },
        ],
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.knowledge_pack", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    cmd = commands.add_parser("build", help="build pack.json, go_bp.gmt.gz and cell_ontology.json.gz")
    cmd.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder to write the pack into")
    cmd.add_argument("--debs", type=Path, default=None, help=f"folder holding {GO_DEB}_*.deb and {ORG_DEB}_*.deb "
                     "(default: `apt-get download` them into a temporary folder)")
    cmd.add_argument("--min-genes", type=int, default=MIN_GENES)
    cmd.add_argument("--max-genes", type=int, default=MAX_GENES)
    args = parser.parse_args(argv)
    try:
        manifest = build(args.out, args.debs, min_genes=args.min_genes, max_genes=args.max_genes)
    except PackBuildError as exc:
        print(f"knowledge pack: {exc}", file=sys.stderr)
        return 1
    for entry in manifest["files"]:
        size = (args.out / entry["name"]).stat().st_size
        print(f"{args.out / entry['name']}: {size / 1e6:.2f} MB, sha256 {entry['sha256'][:16]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
