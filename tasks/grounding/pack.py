"""The knowledge pack: gene sets and the Cell Ontology, offline and versioned, read from storage.

``load_pack(pack_uri, gene_set_uris)`` reads ``pack.json`` and the files it lists through
``clients.storage`` (``file://`` or ``gs://``), checks every file's sha256 against ``pack.json``,
adds the user's GMT files, and caches the result per process by URIs and digests. Built by
``python -m deployments.knowledge_pack build``; see docs/knowledge_pack.md.
"""

from __future__ import annotations

import contextlib
import difflib
import gzip
import hashlib
import json
import math
import re
import threading
from collections import OrderedDict, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from tasks.grounding.models import CellTypeTerm

PACK_FORMAT = "pack-1"
MANIFEST = "pack.json"
REBUILD = "python -m deployments.knowledge_pack build"
GO_COLLECTION = "GO BP"


class GmtError(ValueError):
    """A GMT file that cannot be read; the message names the file, the line and the fix."""


class UnknownGeneSet(KeyError):
    """A gene set the pack does not have; the message lists the closest names."""

    def __str__(self) -> str:  # KeyError quotes its message; this one is meant to be read
        return str(self.args[0]) if self.args else ""


class PackError(ValueError):
    """A pack that cannot be used as stored (missing file, digest mismatch, unknown format)."""


@dataclass(frozen=True)
class PackSource:
    """Where one part of the pack came from."""

    name: str  # "GO.db", "org.Hs.eg.db", "Cell Ontology (cellxgene-ontology-guide)", or a GMT's file name
    version: str
    sha256: str  # of the source file as obtained (the .deb, the ontology JSON, the GMT)
    licence: str
    url: str = ""


@dataclass(frozen=True)
class GeneSet:
    set_id: str  # GO:0006954, or "<gmt name>:<set name>"
    name: str  # "inflammatory response"
    genes: frozenset[str]  # upper-case symbols
    collection: str  # "GO BP", or the GMT's name


class GeneSets(Mapping[str, GeneSet]):
    """Gene sets by id, in the order their files list them.

    A set of the pack's own GMT keeps its genes as the line's text until it is first asked for: the
    9k GO BP sets' frozensets cost ~0.2 s, and before the GPU job a run reads only their names (the
    expectations); the round makes them all while its job runs (:meth:`make_all`). Shared by the
    threads of a process: making a set twice at once gives two equal sets, one kept.
    """

    def __init__(self, entries: dict[str, GeneSet | tuple[str, str, str]] | None = None) -> None:
        self._entries: dict[str, GeneSet | tuple[str, str, str]] = dict(entries or {})  # or (name, collection, genes)

    def add(self, gene_set: GeneSet) -> None:
        self._entries[gene_set.set_id] = gene_set

    def add_line(self, set_id: str, name: str, collection: str, genes: str) -> None:
        """A set whose genes are ``genes``: upper-case symbols joined by tabs, as the pack's GMT has them."""
        self._entries[set_id] = (name, collection, genes)

    def copy(self) -> GeneSets:
        return GeneSets(self._entries)

    def __getitem__(self, set_id: str) -> GeneSet:
        entry = self._entries[set_id]
        if isinstance(entry, GeneSet):
            return entry
        name, collection, genes = entry
        made = GeneSet(set_id=set_id, name=name, genes=frozenset(genes.split("\t")), collection=collection)
        self._entries[set_id] = made  # a value replaced, never a key added: safe beside an iteration
        return made

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, set_id: object) -> bool:
        return set_id in self._entries

    def names(self) -> dict[str, str]:
        """set id -> name, without making the sets."""
        return {set_id: e.name if isinstance(e, GeneSet) else e[0] for set_id, e in self._entries.items()}

    def make_all(self) -> None:
        for set_id in self._entries:
            self[set_id]


def set_names(gene_sets: Mapping[str, GeneSet]) -> dict[str, str]:
    """set id -> name of any mapping of sets (a pack built by hand holds a plain dict)."""
    if isinstance(gene_sets, GeneSets):
        return gene_sets.names()
    return {set_id: gene_set.name for set_id, gene_set in gene_sets.items()}


@dataclass(frozen=True)
class OntologyTerm:
    term_id: str  # CL:0000236
    label: str
    synonyms: tuple[str, ...] = ()
    ancestors: tuple[str, ...] = ()  # nearest first


# --- text helpers: words for search, keys for cell type names -------------------------------------

_STOPWORDS = frozenset({"a", "an", "and", "by", "for", "from", "in", "into", "of", "on", "or", "the", "to", "via", "with"})
_CL_ID = re.compile(r"^cl[:_ ]?(\d{7})$", re.IGNORECASE)


def _stem(word: str) -> str:
    """Plural to singular, crudely but the same way on both sides: 'cells' -> 'cell'."""
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def _words(text: str) -> list[str]:
    """Search words: lower case, split on anything not a letter or digit, stop words dropped."""
    return [_stem(w) for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in _STOPWORDS]


def _cell_key(text: str) -> str:
    """One spelling for the forms data uses: 'CD14+ Monocytes', 'cd14_positive_monocyte' -> 'cd14 positive monocyte'."""
    text = text.lower().replace("_", " ")
    text = re.sub(r"\+", " positive ", text)
    text = re.sub(r"(?<=[a-z0-9])-(?=\s|/|,|$)", " negative ", text)  # "CD16- monocyte"
    return " ".join(_stem(w) for w in re.findall(r"[a-z0-9]+", text))


def _rank(query: list[str], docs: dict[str, set[str]], index: dict[str, set[str]], lengths: dict[str, int],
          limit: int) -> list[str]:
    """Keys whose words share the query's, best first: rarer words weigh more (idf), shorter names win ties."""
    n = max(len(docs), 1)
    score: dict[str, float] = defaultdict(float)
    for word in dict.fromkeys(query):
        hits = index.get(word, ())
        if hits:
            weight = math.log(1 + n / len(hits))
            for key in hits:
                score[key] += weight
    best = sorted(score, key=lambda k: (-round(score[k], 9), lengths[k], k))
    return best[: max(limit, 0)]


# --- the pack ---------------------------------------------------------------------------------------


@dataclass
class KnowledgePack:
    version: str  # e.g. "pack-1 (GO.db 3.16.0, org.Hs.eg.db 3.16.0, CL v2026-03-26)" plus user GMT digests
    sources: list[PackSource]
    gene_sets: Mapping[str, GeneSet]  # by set_id (a loaded pack's: GeneSets)
    cell_types: dict[str, OntologyTerm] = field(default_factory=dict)  # by term_id
    # Look-up tables, built on first use (a loaded pack is shared by the process: do not mutate it).
    _set_index: dict | None = field(default=None, init=False, repr=False, compare=False)
    _cell_index: dict | None = field(default=None, init=False, repr=False, compare=False)

    # gene sets

    def _sets(self) -> dict:
        if self._set_index is None:
            by_id = {set_id.lower(): set_id for set_id in self.gene_sets}
            by_name: dict[str, list[str]] = defaultdict(list)
            words: dict[str, set[str]] = {}
            index: dict[str, set[str]] = defaultdict(set)
            for set_id, name in sorted(set_names(self.gene_sets).items()):
                by_name[name.lower()].append(set_id)
                words[set_id] = set(_words(name))
                for word in words[set_id]:
                    index[word].add(set_id)
            lengths = {set_id: len(w) for set_id, w in words.items()}
            self._set_index = {"id": by_id, "name": dict(by_name), "words": words, "index": index, "len": lengths}
        return self._set_index

    def gene_set(self, key: str) -> GeneSet:
        """A set by id (GO:0006954, 'hallmark:HALLMARK_HYPOXIA') or exact name, case-insensitive."""
        idx = self._sets()
        wanted = key.strip().lower()
        if wanted in idx["id"]:
            return self.gene_sets[idx["id"][wanted]]
        ids = idx["name"].get(wanted, [])
        if len(ids) == 1:
            return self.gene_sets[ids[0]]
        if len(ids) > 1:
            raise UnknownGeneSet(
                f"gene set {key!r} names {len(ids)} sets ({', '.join(ids)}) in knowledge pack {self.version}; "
                "give its id instead"
            )
        names = sorted(idx["name"])
        close = difflib.get_close_matches(wanted, names, n=5, cutoff=0.6)
        suggestions = [self.gene_sets[idx["name"][name][0]] for name in close]
        if not suggestions:
            suggestions = self.search_gene_sets(key, limit=5)
        hint = "; closest: " + ", ".join(f"{s.name!r} ({s.set_id})" for s in suggestions) if suggestions else ""
        raise UnknownGeneSet(
            f"gene set {key!r} is not in knowledge pack {self.version}{hint}; "
            "use one of those names or ids, or add a GMT file that has it (gene_set_uris)"
        )

    def search_gene_sets(self, text: str, limit: int = 10) -> list[GeneSet]:
        """Sets whose names share the text's words, best first (rare words count more; ties by length, id)."""
        idx = self._sets()
        ranked = _rank(_words(text), idx["words"], idx["index"], idx["len"], limit)
        return [self.gene_sets[set_id] for set_id in ranked]

    # cell types

    def _cells(self) -> dict:
        if self._cell_index is None:
            labels: dict[str, set[str]] = defaultdict(set)
            synonyms: dict[str, set[str]] = defaultdict(set)
            label_keys: dict[str, set[str]] = defaultdict(set)
            synonym_keys: dict[str, set[str]] = defaultdict(set)
            words: dict[str, set[str]] = {}
            index: dict[str, set[str]] = defaultdict(set)
            for term_id, term in self.cell_types.items():
                labels[term.label.lower()].add(term_id)
                label_keys[_cell_key(term.label)].add(term_id)
                words[term_id] = set(_words(term.label))
                for synonym in term.synonyms:
                    synonyms[synonym.lower()].add(term_id)
                    synonym_keys[_cell_key(synonym)].add(term_id)
                    words[term_id] |= set(_words(synonym))
                for word in words[term_id]:
                    index[word].add(term_id)
            lengths = {term_id: len(_words(term.label)) for term_id, term in self.cell_types.items()}
            self._cell_index = {
                "lookups": [("label", labels), ("synonym", synonyms), ("label", label_keys), ("synonym", synonym_keys)],
                "words": words, "index": index, "len": lengths,
            }
        return self._cell_index

    def _term(self, term_id: str, matched: str, matched_by: str) -> CellTypeTerm:
        term = self.cell_types[term_id]
        return CellTypeTerm(
            ontology_id=term.term_id, label=term.label, matched=matched, matched_by=matched_by,
            ancestors=list(term.ancestors),
        )

    def resolve_cell_type(self, text: str) -> CellTypeTerm | None:
        """The Cell Ontology term a text names (id, label, synonym, or their usual data spellings), else None.

        Only an unambiguous exact match counts: a spelling two terms share resolves to None, never a guess.
        """
        text = text.strip()
        if not text:
            return None
        cl = _CL_ID.match(text)
        if cl:
            term_id = f"CL:{cl.group(1)}"
            return self._term(term_id, text, "id") if term_id in self.cell_types else None
        lookups = self._cells()["lookups"]
        key = _cell_key(text)
        # Exact text first, then the normalised key, then the key with "cell" added ("Dendritic", "NK").
        candidates = [(0, text.lower()), (1, key)]
        if key and not key.endswith("cell"):
            candidates.append((1, f"{key} cell"))
        for kind, wanted in candidates:
            for matched_by, table in lookups[2 * kind : 2 * kind + 2]:
                hits = table.get(wanted, ())
                if len(hits) == 1:
                    return self._term(next(iter(hits)), text, matched_by)
                if len(hits) > 1:
                    return None
        return None

    def search_cell_types(self, text: str, limit: int = 10) -> list[OntologyTerm]:
        """Terms whose label or synonyms share the text's words, best first (ties: shorter label, id)."""
        idx = self._cells()
        ranked = _rank(_words(text), idx["words"], idx["index"], idx["len"], limit)
        return [self.cell_types[term_id] for term_id in ranked]


# --- GMT --------------------------------------------------------------------------------------------


def gmt_collection(source: str) -> str:
    """A GMT's collection name: its file name without .gmt / .gz / .txt ('h.all.v2024.1.Hs.symbols.gmt' -> 'h.all.v2024.1.Hs.symbols')."""
    name = PurePosixPath(source.rstrip("/")).name
    for suffix in (".gz", ".gmt", ".txt", ".tsv"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return name or source


def _gmt_text(data: str | bytes, source: str) -> str:
    if isinstance(data, bytes):
        if data[:2] == b"\x1f\x8b":
            try:
                data = gzip.decompress(data)
            except (OSError, EOFError) as exc:
                raise GmtError(f"{source}: a damaged gzip file ({exc}); copy it again") from exc
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            raise GmtError(
                f"{source}, line {line}: not UTF-8 text (byte {exc.start}); a GMT file is tab-separated UTF-8 text: "
                "save it as UTF-8"
            ) from None
    if "\x00" in data:
        line = data[: data.index("\x00")].count("\n") + 1
        raise GmtError(f"{source}, line {line}: binary content (a NUL byte); a GMT file is tab-separated text")
    return data


def _gmt_rows(data: str | bytes, source: str) -> Iterable[tuple[int, str, str, list[str]]]:
    """(line number, name, description, genes) per set, each line checked, duplicates refused."""
    seen: dict[str, int] = {}
    rows = 0
    for number, line in enumerate(_gmt_text(data, source).splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.rstrip("\r\n").split("\t")
        if len(fields) < 3:
            hint = " (the fields look space-separated: use tabs)" if "\t" not in line and " " in line.strip() else ""
            raise GmtError(
                f"{source}, line {number}: {len(fields)} tab-separated field(s){hint}; a GMT line is "
                "<set name><TAB><description><TAB><gene><TAB><gene>..."
            )
        name = fields[0].strip()
        if not name:
            raise GmtError(f"{source}, line {number}: the set name (first field) is empty; give the set a name")
        genes = [g.strip().upper() for g in fields[2:] if g.strip()]
        if not genes:
            raise GmtError(f"{source}, line {number}: set {name!r} has no genes; list its genes after the description")
        if name.lower() in seen:
            raise GmtError(
                f"{source}, line {number}: set {name!r} is already defined on line {seen[name.lower()]}; "
                "give each set a unique name (names are compared case-insensitively)"
            )
        seen[name.lower()] = number
        rows += 1
        yield number, name, fields[1].strip(), genes
    if not rows:
        raise GmtError(f"{source}: no gene sets in the file; a GMT line is <set name><TAB><description><TAB><gene>...")


def parse_gmt(text: str | bytes, *, source: str) -> list[GeneSet]:
    """A user's GMT as gene sets with ids '<file stem>:<set name>'; GmtError names the file, line and fix."""
    collection = gmt_collection(source)
    return [
        GeneSet(set_id=f"{collection}:{name}", name=name, genes=frozenset(genes), collection=collection)
        for _, name, _, genes in _gmt_rows(text, source)
    ]


def _add_pack_gmt(gene_sets: GeneSets, data: bytes, source: str, collection: str) -> None:
    """The pack's own GMT: the first field is the id (GO:0006954), the second the term's name, the
    rest its genes, upper-case (the file's digest was checked), kept as text until a set is used."""
    for number, line in enumerate(_gmt_text(data, source).splitlines(), start=1):
        if not line:
            continue
        fields = line.split("\t", 2)
        if len(fields) < 3 or not fields[0] or not fields[2]:
            raise PackError(f"{source}, line {number}: not a line of this pack's GMT; rebuild with `{REBUILD}`")
        set_id, name, genes = fields
        if set_id in gene_sets:
            raise PackError(f"{source}, line {number}: set {set_id} is listed twice; rebuild with `{REBUILD}`")
        gene_sets.add_line(set_id, name.strip() or set_id, collection, genes)


def _parse_ontology(data: bytes, source: str) -> tuple[str, dict[str, OntologyTerm]]:
    try:
        doc = json.loads(gzip.decompress(data))
        terms = {
            term_id: OntologyTerm(term_id, t["label"], tuple(t.get("synonyms", ())), tuple(t.get("ancestors", ())))
            for term_id, t in doc["terms"].items()
        }
    except (OSError, EOFError, ValueError, KeyError, TypeError) as exc:
        raise PackError(f"{source}: not a cell ontology file of this pack ({exc}); rebuild with `{REBUILD}`") from exc
    return str(doc.get("version", "")), terms


# --- loading ----------------------------------------------------------------------------------------


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _get(uri: str, what: str) -> bytes:
    from clients.storage import ObjectNotFoundError, store_for

    try:
        return store_for(uri).get_bytes(uri)
    except (ObjectNotFoundError, FileNotFoundError) as exc:
        raise PackError(f"{uri}: {what} not found ({exc}); check the URI, or rebuild the pack with `{REBUILD}`") from exc


def _manifest_uri(pack_uri: str) -> tuple[str, str]:
    """(folder, pack.json URI) for a pack folder or a pack.json URI."""
    from clients.storage import join_uri

    if pack_uri.rstrip("/").endswith(".json"):
        folder = pack_uri.rstrip("/").rsplit("/", 1)[0]
        return folder, pack_uri
    return pack_uri.rstrip("/"), join_uri(pack_uri, MANIFEST)


@dataclass(frozen=True)
class _Base:
    version: str
    sources: tuple[PackSource, ...]
    gene_sets: GeneSets
    cell_types: dict[str, OntologyTerm]


def _load_base(folder: str, manifest_uri: str, manifest_bytes: bytes) -> _Base:
    from clients.storage import join_uri

    try:
        manifest = json.loads(manifest_bytes)
        fmt = manifest.get("format")
    except (ValueError, AttributeError) as exc:
        raise PackError(f"{manifest_uri}: not a pack manifest ({exc}); rebuild with `{REBUILD}`") from exc
    if fmt != PACK_FORMAT:
        raise PackError(f"{manifest_uri}: pack format {fmt!r}, this code reads {PACK_FORMAT!r}; rebuild with `{REBUILD}`")
    sources = tuple(
        PackSource(s["name"], s["version"], s["sha256"], s["licence"], s.get("url", "")) for s in manifest["sources"]
    )
    gene_sets = GeneSets()
    cell_types: dict[str, OntologyTerm] = {}
    cl_version = ""
    for entry in manifest["files"]:
        uri = join_uri(folder, entry["name"])
        data = _get(uri, f"pack file listed in {MANIFEST}")
        actual = _sha256(data)
        if actual != entry["sha256"]:
            raise PackError(
                f"{uri}: sha256 {actual[:16]}... does not match {MANIFEST} ({entry['sha256'][:16]}...); the file was "
                f"changed or copied partly: restore it (git checkout deployments/knowledge) or rebuild with `{REBUILD}`"
            )
        if entry["kind"] == "gene_sets":
            _add_pack_gmt(gene_sets, data, uri, entry.get("collection", GO_COLLECTION))
        elif entry["kind"] == "cell_ontology":
            cl_version, cell_types = _parse_ontology(data, uri)
        else:
            raise PackError(f"{manifest_uri}: unknown file kind {entry['kind']!r}; rebuild with `{REBUILD}`")
    parts = [f"{s.name.split(' (')[0]} {s.version}" for s in sources if not s.name.startswith("Cell Ontology")]
    if cell_types:
        parts.append(f"CL {cl_version}")
    return _Base(f"{fmt} ({', '.join(parts)})", sources, gene_sets, cell_types)


_LOCK = threading.Lock()
_CACHE_SIZE = 8
_BASES: OrderedDict[tuple, _Base] = OrderedDict()
_PACKS: OrderedDict[tuple, KnowledgePack] = OrderedDict()
_GMTS: OrderedDict[tuple, list[GeneSet]] = OrderedDict()


_MAKING: dict[tuple, threading.Lock] = {}  # a lock per entry being made: a second caller waits for it


def _cached(cache: OrderedDict, key: tuple, make):
    """``cache[key]``, made once: a caller that comes while another thread makes it waits for that one
    (the flow preloads the pack on a thread; the task that then asks for it must not parse it again)."""
    with _LOCK:
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        making = _MAKING.setdefault((id(cache), key), threading.Lock())
    with making:
        with _LOCK:
            if key in cache:  # made by the thread this caller waited for
                cache.move_to_end(key)
                return cache[key]
        try:
            value = make()
        finally:
            with _LOCK:
                _MAKING.pop((id(cache), key), None)
        with _LOCK:
            cache[key] = value
            while len(cache) > _CACHE_SIZE:
                cache.popitem(last=False)
    return value


def clear_cache() -> None:
    """Forget every pack this process loaded (benchmarks measure the cold load with it)."""
    with _LOCK:
        _BASES.clear()
        _PACKS.clear()
        _GMTS.clear()


def start_loading_pack(pack_uri: str, gene_set_uris: Sequence[str] = ()) -> threading.Thread:
    """``load_pack`` on a background thread, with the look-ups the expectations search, so a flow
    reads the pack (~0.5 s) while it waits on other work (the inputs' checks); ``load_pack`` then
    finds it cached. Errors are left to that later call, which meets them again and reports them."""

    def run() -> None:
        with contextlib.suppress(Exception):
            pack = load_pack(pack_uri, gene_set_uris)
            pack._sets()
            pack._cells()

    thread = threading.Thread(target=run, name="load-knowledge-pack", daemon=True)
    thread.start()
    return thread


def load_pack(pack_uri: str, gene_set_uris: Sequence[str] = ()) -> KnowledgePack:
    """The pack in ``pack_uri`` (a folder holding pack.json, file:// or gs://) plus the user's GMT files.

    pack.json and every GMT are read on each call (small) and their digests key the cache, so a
    changed file is read again; the pack's derived files are read and checked once per digest.
    """
    folder, manifest_uri = _manifest_uri(pack_uri)
    manifest_bytes = _get(manifest_uri, "knowledge pack manifest")
    base_key = (folder, _sha256(manifest_bytes))
    gmts = []
    for uri in dict.fromkeys(gene_set_uris):
        data = _get(uri, "gene set file (GMT)")
        gmts.append((uri, _sha256(data), data))
    key = (base_key, tuple((uri, digest) for uri, digest, _ in gmts))

    def make() -> KnowledgePack:
        base = _cached(_BASES, base_key, lambda: _load_base(folder, manifest_uri, manifest_bytes))
        gene_sets = base.gene_sets.copy()
        owner = dict.fromkeys(gene_sets, manifest_uri)
        sources = list(base.sources)
        version = base.version
        for uri, digest, data in gmts:
            sets = _cached(_GMTS, (uri, digest), lambda data=data, uri=uri: parse_gmt(data, source=uri))
            for gene_set in sets:
                if gene_set.set_id in gene_sets:
                    raise GmtError(
                        f"{uri}: set id {gene_set.set_id!r} is already given by {owner[gene_set.set_id]}; "
                        "two GMT files with the same file name: rename one"
                    )
                gene_sets.add(gene_set)
                owner[gene_set.set_id] = uri
            name = PurePosixPath(uri).name
            sources.append(PackSource(name, f"sha256:{digest[:12]}", digest, "as supplied", uri))
            version += f" + {name} sha256:{digest[:12]}"
        return KnowledgePack(version=version, sources=sources, gene_sets=gene_sets, cell_types=base.cell_types)

    return _cached(_PACKS, key, make)
