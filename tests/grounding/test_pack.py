"""The knowledge pack as a user meets it: the committed pack loads, checks itself, answers look-ups,
refuses broken GMT files with the line to fix, and rebuilds to the same bytes."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from clients.grounding_settings import DEFAULT_PACK_DIR
from deployments import knowledge_pack
from tasks.grounding.pack import (
    GeneSet,
    GmtError,
    PackError,
    UnknownGeneSet,
    clear_cache,
    load_pack,
    parse_gmt,
    start_loading_pack,
)

DEBS = Path("/tmp/debs")
PACK_URI = DEFAULT_PACK_DIR.as_uri()


@pytest.fixture(scope="module")
def pack():
    return load_pack(PACK_URI)


def copy_pack(tmp_path: Path) -> Path:
    folder = tmp_path / "pack"
    shutil.copytree(DEFAULT_PACK_DIR, folder)
    return folder


def test_a_pack_being_read_on_a_thread_is_not_read_again(tmp_path: Path, monkeypatch) -> None:
    """The flow reads the pack on a thread while it checks its inputs; the step that then asks for it
    waits for that read instead of parsing the pack a second time, and finds its look-ups built."""
    from tasks.grounding import pack as pack_module

    parsed = []
    real = pack_module._load_base
    monkeypatch.setattr(pack_module, "_load_base", lambda *args: parsed.append(args[1]) or real(*args))
    uri = copy_pack(tmp_path).as_uri()  # a folder no other test read: the thread's read is the first

    reading = start_loading_pack(uri)
    asked = load_pack(uri)  # while the thread parses the GO BP sets (~0.3 s)
    reading.join()
    assert len(parsed) == 1
    assert load_pack(uri) is asked
    assert asked.resolve_cell_type("B cell").ontology_id == "CL:0000236"


def test_a_failed_read_on_the_thread_is_reported_by_the_next_load(tmp_path: Path) -> None:
    folder = copy_pack(tmp_path)
    (folder / "go_bp.gmt.gz").write_bytes(b"not the pack's file")
    start_loading_pack(folder.as_uri()).join()  # the thread swallows it: the flow's task reports it
    with pytest.raises(PackError, match="sha256"):
        load_pack(folder.as_uri())


def _made(pack) -> int:
    """How many of a loaded pack's gene sets exist as GeneSet objects (the others are still their line)."""
    return sum(isinstance(entry, GeneSet) for entry in pack.gene_sets._entries.values())


def test_the_expectations_look_ups_make_no_gene_set_before_it_is_used(tmp_path: Path) -> None:
    """Before the GPU job a run reads only the sets' names (the expectations' search and look-ups); the
    9k sets' gene frozensets are made when a set is used, or all at once by the round while its job runs."""
    pack = load_pack(copy_pack(tmp_path).as_uri())
    assert pack.search_gene_sets("inflammatory response", limit=3)[0].name == "inflammatory response"
    assert _made(pack) == 3  # the three returned, none other
    inflammatory = pack.gene_set("GO:0006954")
    assert _made(pack) == 3 and inflammatory is pack.gene_sets["GO:0006954"]

    pack.gene_sets.make_all()
    assert _made(pack) == len(pack.gene_sets)


def test_a_gene_set_holds_its_line_of_the_packs_file(tmp_path: Path, pack) -> None:
    lines = gzip.decompress((DEFAULT_PACK_DIR / "go_bp.gmt.gz").read_bytes()).decode().splitlines()
    for line in (lines[0], lines[len(lines) // 2], lines[-1]):
        set_id, name, *genes = line.split("\t")
        gene_set = pack.gene_sets[set_id]
        assert (gene_set.set_id, gene_set.name, gene_set.genes) == (set_id, name, frozenset(genes))
        assert gene_set.collection == "GO BP"
    assert list(pack.gene_sets)[:3] == [line.split("\t", 1)[0] for line in lines[:3]]  # the file's order


def test_a_damaged_line_of_the_packs_gmt_is_named(tmp_path: Path) -> None:
    """A pack whose digests were rewritten over a broken GMT (a hand edit) names the line, not a KeyError later."""
    folder = copy_pack(tmp_path)
    lines = gzip.decompress((folder / "go_bp.gmt.gz").read_bytes()).decode().splitlines()
    lines[1] = lines[1].split("\t")[0]  # the id alone: no name, no genes
    data = gzip.compress(("\n".join(lines) + "\n").encode())
    (folder / "go_bp.gmt.gz").write_bytes(data)
    manifest = json.loads((folder / "pack.json").read_text())
    for entry in manifest["files"]:
        if entry["name"] == "go_bp.gmt.gz":
            entry["sha256"] = knowledge_pack.sha256_file(folder / "go_bp.gmt.gz")
    (folder / "pack.json").write_text(json.dumps(manifest))
    with pytest.raises(PackError, match=r"go_bp.gmt.gz, line 2: .*rebuild"):
        load_pack(folder.as_uri())


# --- the committed pack ----------------------------------------------------------------------------


def test_committed_pack_loads_with_its_sources_and_digests(pack) -> None:
    manifest = json.loads((DEFAULT_PACK_DIR / "pack.json").read_text())
    for entry in manifest["files"]:
        assert knowledge_pack.sha256_file(DEFAULT_PACK_DIR / entry["name"]) == entry["sha256"], entry["name"]
    assert pack.version.startswith("pack-1 (GO.db 3.16.0, org.Hs.eg.db 3.16.0, CL v")
    names = {s.name for s in pack.sources}
    assert {"GO.db", "org.Hs.eg.db", "Cell Ontology (cellxgene-ontology-guide)"} <= names
    assert all(len(s.sha256) == 64 and "CC BY 4.0" in s.licence for s in pack.sources)
    assert len(pack.gene_sets) > 5000 and len(pack.cell_types) > 3000


def test_inflammatory_response_is_a_large_go_set(pack) -> None:
    gene_set = pack.gene_set("GO:0006954")
    assert gene_set.name == "inflammatory response"
    assert gene_set.collection == "GO BP"
    assert len(gene_set.genes) > 300
    assert {"IL1B", "TNF", "IL6", "CXCL8"} <= gene_set.genes
    assert pack.gene_set("Inflammatory Response") is gene_set
    assert pack.gene_set("go:0006954") is gene_set


def test_search_gene_sets_ranks_the_named_process_first(pack) -> None:
    found = pack.search_gene_sets("response to interferon-gamma", limit=5)
    assert found[0].set_id == "GO:0034341"
    assert all("interferon" in s.name for s in found)
    assert found == pack.search_gene_sets("response to interferon-gamma", limit=5)  # deterministic
    assert pack.search_gene_sets("qwxzy", limit=5) == []


@pytest.mark.parametrize(
    ("text", "term_id", "matched_by"),
    [
        ("B cell", "CL:0000236", "label"),
        ("CD14+ Monocyte", "CL:0001054", "label"),
        ("CD14+ Monocytes", "CL:0001054", "label"),
        ("cd14_positive_monocyte", "CL:0001054", "label"),
        ("B lymphocytes", "CL:0000236", "synonym"),
        ("cl_0000236", "CL:0000236", "id"),
        ("NK", "CL:0000623", "synonym"),
    ],
)
def test_cell_types_resolve_from_the_forms_data_uses(pack, text: str, term_id: str, matched_by: str) -> None:
    term = pack.resolve_cell_type(text)
    assert term is not None and term.ontology_id == term_id
    assert term.matched == text and term.matched_by == matched_by
    assert term.label == pack.cell_types[term_id].label


def test_cell_type_ancestors_come_nearest_first(pack) -> None:
    term = pack.resolve_cell_type("CD14+ Monocyte")
    assert term.ancestors[0] == "CL:0000576"  # monocyte
    assert pack.cell_types["CL:0000576"].label == "monocyte"
    assert "CL:0000000" in term.ancestors  # cell


@pytest.mark.parametrize("text", ["flurbish glorp", "CL:9999999", "", "CD4+ T"])
def test_a_type_nothing_names_resolves_to_none(pack, text: str) -> None:
    assert pack.resolve_cell_type(text) is None


def test_search_cell_types_by_label_words(pack) -> None:
    found = pack.search_cell_types("CD14 monocyte", limit=5)
    assert found[0].term_id == "CL:0001054"
    assert all("monocyte" in t.label for t in found)


def test_unknown_gene_set_names_the_closest(pack) -> None:
    with pytest.raises(UnknownGeneSet) as err:
        pack.gene_set("inflamatory respons")
    message = str(err.value)
    assert "'inflammatory response' (GO:0006954)" in message
    assert "gene_set_uris" in message
    assert isinstance(err.value, KeyError)


# --- GMT files -------------------------------------------------------------------------------------

GOOD = "HYPOXIA\thttp://example.org\tVEGFA\tslc2a1 \tLDHA\nIFN\tdesc\tISG15\tMX1\n"


def test_parse_gmt_reads_sets_with_upper_case_genes() -> None:
    sets = parse_gmt(GOOD, source="gs://bucket/hallmark.gmt")
    assert [s.set_id for s in sets] == ["hallmark:HYPOXIA", "hallmark:IFN"]
    assert sets[0].genes == frozenset({"VEGFA", "SLC2A1", "LDHA"})
    assert sets[0].collection == "hallmark" and sets[0].name == "HYPOXIA"


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("A\tdesc\tG1\nB\tdesc\n", 2, "2 tab-separated field"),
        ("A desc G1 G2\n", 1, "use tabs"),
        ("A\tdesc\tG1\n\tdesc\tG2\n", 2, "set name (first field) is empty"),
        ("A\tdesc\tG1\nB\tdesc\t\t \n", 2, "has no genes"),
        ("A\tdesc\tG1\nB\td\tG2\na\tdesc\tG3\n", 3, "already defined on line 1"),
        (b"A\tdesc\tG1\nB\tdesc\t\xff\xfe\n", 2, "not UTF-8"),
        (b"A\tdesc\tG1\x00\x01\n", 1, "binary"),
    ],
)
def test_malformed_gmt_names_file_line_and_fix(text: str | bytes, line: int, words: str) -> None:
    with pytest.raises(GmtError) as err:
        parse_gmt(text, source="my_sets.gmt")
    message = str(err.value)
    assert message.startswith(f"my_sets.gmt, line {line}:")
    assert words in message


def test_empty_gmt_is_an_error() -> None:
    with pytest.raises(GmtError, match="my_sets.gmt: no gene sets"):
        parse_gmt("\n\n", source="my_sets.gmt")


def test_user_gmt_adds_its_sets_and_a_source(tmp_path: Path, pack) -> None:
    gmt = tmp_path / "hallmark.gmt"
    gmt.write_text(GOOD)
    with_gmt = load_pack(PACK_URI, [gmt.as_uri()])
    assert with_gmt.gene_set("hallmark:HYPOXIA").genes == {"VEGFA", "SLC2A1", "LDHA"}
    assert with_gmt.gene_set("hypoxia").set_id == "hallmark:HYPOXIA"  # exact name, case-insensitive
    assert with_gmt.gene_set("GO:0006954") == pack.gene_set("GO:0006954")
    source = with_gmt.sources[-1]
    assert source.name == "hallmark.gmt" and source.licence == "as supplied" and source.url == gmt.as_uri()
    assert with_gmt.version.startswith(pack.version + " + hallmark.gmt sha256:" + source.sha256[:12])
    assert "hallmark:HYPOXIA" not in pack.gene_sets  # the plain pack is unchanged


def test_gzipped_user_gmt_is_read(tmp_path: Path) -> None:
    gmt = tmp_path / "mine.gmt.gz"
    gmt.write_bytes(gzip.compress(GOOD.encode()))
    assert "mine:IFN" in load_pack(PACK_URI, [str(gmt)]).gene_sets


def test_a_changed_gmt_is_read_again_and_a_same_one_is_cached(tmp_path: Path) -> None:
    gmt = tmp_path / "sets.gmt"
    gmt.write_text(GOOD)
    first = load_pack(PACK_URI, [gmt.as_uri()])
    assert load_pack(PACK_URI, [gmt.as_uri()]) is first
    gmt.write_text(GOOD + "NEW\tdesc\tCD14\n")
    second = load_pack(PACK_URI, [gmt.as_uri()])
    assert "sets:NEW" in second.gene_sets and second.version != first.version


def test_a_malformed_user_gmt_fails_the_load_naming_it(tmp_path: Path) -> None:
    gmt = tmp_path / "broken.gmt"
    gmt.write_text("A\tdesc\tG1\nB only two\tfields\n")
    with pytest.raises(GmtError, match=r"broken\.gmt, line 2:"):
        load_pack(PACK_URI, [gmt.as_uri()])


def test_a_missing_user_gmt_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PackError, match="gene set file"):
        load_pack(PACK_URI, [(tmp_path / "absent.gmt").as_uri()])


# --- integrity and the build -----------------------------------------------------------------------


def test_a_tampered_pack_file_fails_the_digest_check(tmp_path: Path) -> None:
    folder = copy_pack(tmp_path)
    data = bytearray((folder / "cell_ontology.json.gz").read_bytes())
    data[-20] ^= 0xFF
    (folder / "cell_ontology.json.gz").write_bytes(bytes(data))
    with pytest.raises(PackError) as err:
        load_pack(folder.as_uri())
    message = str(err.value)
    assert "cell_ontology.json.gz" in message and "does not match pack.json" in message
    assert "python -m deployments.knowledge_pack build" in message


def test_a_pack_folder_without_pack_json_says_how_to_build(tmp_path: Path) -> None:
    with pytest.raises(PackError, match="knowledge_pack build"):
        load_pack(tmp_path.as_uri())


def test_the_pack_loads_from_gcs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from google.cloud import storage

    from clients.settings import get_settings
    from clients.storage import store_for
    from tests.fake_gcs import gcs_emulator

    with gcs_emulator() as gcs:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.url)
        get_settings.cache_clear()
        storage.Client().create_bucket("packs")
        store = store_for("gs://packs/x")
        for path in sorted(DEFAULT_PACK_DIR.glob("*")):
            if path.suffix != ".md":
                store.put_file(path, f"gs://packs/knowledge/{path.name}")
        gmt = tmp_path / "hallmark.gmt"
        gmt.write_text(GOOD)
        store.put_file(gmt, "gs://packs/hallmark.gmt")
        clear_cache()
        pack = load_pack("gs://packs/knowledge", ["gs://packs/hallmark.gmt"])
    get_settings.cache_clear()
    assert pack.gene_set("GO:0006954").name == "inflammatory response"
    assert "hallmark:IFN" in pack.gene_sets
    assert pack.resolve_cell_type("B cell").ontology_id == "CL:0000236"


@pytest.mark.skipif(not (DEBS / "r-bioc-go.db_3.16.0-1_all.deb").is_file(), reason="no Debian .debs in /tmp/debs "
                    "(download them with `apt-get download r-bioc-go.db r-bioc-org.hs.eg.db` to run this)")
def test_the_build_reproduces_the_committed_pack(tmp_path: Path) -> None:
    manifest = knowledge_pack.build(tmp_path / "pack", DEBS)
    committed = json.loads((DEFAULT_PACK_DIR / "pack.json").read_text())
    assert manifest == committed
    assert (tmp_path / "pack" / "pack.json").read_bytes() == (DEFAULT_PACK_DIR / "pack.json").read_bytes()
    for entry in committed["files"]:
        assert (tmp_path / "pack" / entry["name"]).read_bytes() == (DEFAULT_PACK_DIR / entry["name"]).read_bytes()
