"""Bounded-time fuzzing of the two input paths a user's files go through before any GPU is paid for.

The claim: a bad input only ever produces OUR OWN validation error (one that names the file and says
what to do), never a raw library exception (h5py's OSError, a KeyError from anndata, numpy's
ValueError, a pdfium or Pillow error). A raw exception reaches the user as a stack trace with no fix,
and in a Prefect task it is retried as if it were transient.

- h5ad: ``validate_h5ad`` returns ``DatasetFacts`` or raises ``InputValidationError``.
- documents: ``DocumentReader.check`` returns a page count or raises ``DocumentError``.

Examples are derandomised (the same inputs every run, no example database) and bounded so the file
runs in well under a minute on two cores. Set ``FUZZ_EXAMPLES_SCALE`` (e.g. 10) for a longer hunt.
"""

from __future__ import annotations

import io
import itertools
import os
import re
import struct
import warnings
import zlib
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pypdfium2 as pdfium
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from PIL import Image

from clients.ocr import DocumentError, DocumentReader, OcrSettings
from inference.data import matrix_at
from tasks.validation import DatasetFacts, InputValidationError, validate_h5ad

SCALE = max(1, int(os.environ.get("FUZZ_EXAMPLES_SCALE", "1")))

# Duplicate gene names are one of the odd inputs on purpose; anndata warns on every read of them.
pytestmark = pytest.mark.filterwarnings("ignore:Variable names are not unique:UserWarning")


def bounded(max_examples: int):
    """Deterministic, bounded hypothesis settings (tmp_path is shared by the examples of one test)."""
    return settings(
        max_examples=max_examples * SCALE,
        deadline=None,
        derandomize=True,
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    )


_names = itertools.count()


def note(label: str) -> None:
    """Count outcomes for ``--hypothesis-show-statistics`` (numbers dropped so like outcomes group)."""
    try:
        event(re.sub(r"\b\d+(\.\d+)?\b", "N", label)[:60])
    except InvalidArgument:  # called outside @given
        pass


def fresh(directory: Path, suffix: str) -> Path:
    """A new file name per example, so no example reads another's leftovers."""
    return directory / f"example-{next(_names)}{suffix}"


# -- byte mutations (shared by both paths) ---------------------------------------------------------


def mutations(max_ops: int = 4) -> st.SearchStrategy[list[tuple]]:
    """Edits to apply to a file's bytes: flip bits, overwrite runs, truncate, append junk.

    Offsets are fractions of the length so they land anywhere in files of any size.
    """
    where = st.floats(0.0, 1.0, exclude_max=True)
    op = st.one_of(
        st.tuples(st.just("flip"), where, st.integers(1, 255)),
        st.tuples(st.just("overwrite"), where, st.binary(min_size=1, max_size=16)),
        st.tuples(st.just("fill"), where, st.sampled_from([0x00, 0xFF]), st.integers(1, 512)),
        st.tuples(st.just("truncate"), where),
        st.tuples(st.just("append"), st.binary(min_size=1, max_size=64)),
    )
    return st.lists(op, min_size=1, max_size=max_ops)


def mutate(data: bytes, ops: list[tuple]) -> bytes:
    buf = bytearray(data)
    for kind, *args in ops:
        if not buf and kind != "append":
            continue
        if kind == "flip":
            at = int(args[0] * len(buf))
            buf[at] ^= args[1]
        elif kind == "overwrite":
            at = int(args[0] * len(buf))
            buf[at : at + len(args[1])] = args[1]
        elif kind == "fill":
            at = int(args[0] * len(buf))
            buf[at : at + args[2]] = bytes([args[1]]) * min(args[2], len(buf) - at)
        elif kind == "truncate":
            del buf[int(args[0] * len(buf)) :]
        elif kind == "append":
            buf += args[0]
    return bytes(buf)


# -- h5ad ------------------------------------------------------------------------------------------


def outcome(path: Path, call) -> DatasetFacts | InputValidationError:
    """Run ``call``: its facts, or the InputValidationError naming ``path`` that it raised.

    Any other exception propagates, and fails the test with hypothesis's smallest example.
    """
    try:
        facts = call()
    except InputValidationError as error:
        assert error.path == str(path)
        assert str(error).startswith(f"{path}: ")
        assert error.problem and error.fix
        note("rejected: " + error.problem.split("(")[0].split(":")[0])
        return error
    note("accepted")
    assert isinstance(facts, DatasetFacts)
    assert facts.path == str(path)
    return facts


@pytest.fixture(scope="module")
def small_h5ad(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The bytes of a small valid h5ad: sparse counts in .X, raw present, categorical/numeric/text obs."""
    rng = np.random.default_rng(0)
    n_obs, n_vars = 12, 8
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical(np.array(["B", "T", "NK"])[np.arange(n_obs) % 3]),
            "donor": [f"d{i % 2}" for i in range(n_obs)],
            "depth": np.arange(n_obs) * 1.5,
            "ok": np.arange(n_obs) % 2 == 0,
        },
        index=[f"c{i}" for i in range(n_obs)],
    )
    X = sp.csr_matrix(rng.poisson(2.0, size=(n_obs, n_vars)).astype(np.float32))
    adata = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=[f"Gene{i}" for i in range(n_vars)]))
    adata.raw = adata.copy()
    adata.layers["dense"] = X.toarray()
    path = tmp_path_factory.mktemp("fuzz-h5ad") / "small.h5ad"
    adata.write_h5ad(path)
    validate_h5ad(path)  # the unmutated file is valid
    return path.read_bytes()


# A damaged file that makes libhdf5 loop forever must be rejected after this long, not hang the test.
PROBE_TIMEOUT_S = 5.0
# What the validator says about files it finds damaged; files anndata wrote must never get these.
DAMAGED = ("truncated or corrupt", "cannot be read, the file is damaged", "AnnData cannot read it", "HDF5 metadata")


@bounded(max_examples=90)
@given(ops=mutations())
def test_fuzz_h5ad_byte_mutations_raise_only_input_validation_errors(small_h5ad: bytes, tmp_path: Path, ops) -> None:
    """A damaged copy (bytes flipped or overwritten, zeroed or 0xFF-filled runs, cut short, junk
    appended) of a valid h5ad, as a failed download or a bad disk leaves it, is either still valid or
    rejected with our own error in bounded time: HDF5's RuntimeErrors/OSErrors and anndata's
    KeyErrors must not reach the user, and libhdf5's endless loops on a damaged global heap must end
    in the probe's timeout."""
    path = fresh(tmp_path, ".h5ad")
    path.write_bytes(mutate(small_h5ad, ops))
    outcome(path, lambda: validate_h5ad(path, block_values=16, metadata_timeout_s=PROBE_TIMEOUT_S))


def test_fuzz_h5ad_zeroed_global_heap_is_rejected_not_hung(small_h5ad: bytes, tmp_path: Path) -> None:
    """The damage the fuzz found that hung the validator: zeroed bytes over the first objects of the
    global heap (where anndata's string attributes live) make libhdf5 spin forever, holding the GIL,
    reading an attribute (h5py#2088). Before the metadata probe ran in a child process this never
    returned; now it is our error after the probe's timeout."""
    path = tmp_path / "zeroed.h5ad"
    objects = small_h5ad.index(b"GCOL") + 16  # past the global heap collection's 16-byte header
    path.write_bytes(small_h5ad[:objects] + bytes(32) + small_h5ad[objects + 32 :])
    error = outcome(path, lambda: validate_h5ad(path, metadata_timeout_s=PROBE_TIMEOUT_S))
    assert isinstance(error, InputValidationError)
    assert "did not finish within 5 s" in error.problem, error.problem


ODD_VALUES = [0.0, 1.0, 2.0, 7.0, 0.5, -1.0, float("nan"), float("inf"), float("-inf"), 1e30]
ODD_TEXT = ["", " ", "B", "b", "nan", "None", "ü", "α,β", "0", "1.5", "x" * 40]


@st.composite
def odd_anndata(draw) -> tuple[ad.AnnData, dict]:
    """Valid AnnData of odd shapes and values, and the validate_h5ad keyword arguments to try with it."""
    sizes = st.sampled_from([1, 2, 3, 4, 5, 6, 0])  # 0 cells or genes is odd; mostly not, so later checks run
    n_obs = draw(sizes)
    n_vars = draw(sizes)
    dtype = draw(st.sampled_from([np.float32, np.float64, np.int32, np.int64, np.uint8, np.float16]))
    pool = [v for v in ODD_VALUES if np.issubdtype(dtype, np.floating) or (np.isfinite(v) and v == int(v) and abs(v) < 100)]
    if np.issubdtype(dtype, np.unsignedinteger):
        pool = [v for v in pool if v >= 0]

    def matrix(rows: int, cols: int):
        # mostly clean counts or clean normalised values, so the checks after the value scan run too
        kind = draw(st.sampled_from(["counts", "counts", "normalised", "odd"]))
        values_of = {
            "counts": st.sampled_from([0.0, 1.0, 2.0, 7.0]),
            "normalised": st.sampled_from([0.0, 0.5, 1.25, 3.0]) if np.issubdtype(dtype, np.floating) else st.just(1.0),
            "odd": st.sampled_from(pool),
        }[kind]
        values = draw(st.lists(values_of, min_size=rows * cols, max_size=rows * cols))
        dense = np.array(values, dtype=np.float64).reshape(rows, cols)
        with np.errstate(invalid="ignore", over="ignore"):
            dense = dense.astype(dtype)
        layout = "dense" if dtype is np.float16 else draw(st.sampled_from(["dense", "csr", "csc"]))  # scipy: no f16
        return dense if layout == "dense" else getattr(sp, f"{layout}_matrix")(dense)

    genes = st.sampled_from(["Gene0", "GENE0", "gene1", "Gene2", "ENSG0001", "", "1", "Ü", "Gene9", "MT-CO1"])
    unique = draw(st.sampled_from([True, True, True, False]))  # duplicates are odd; unique names go further
    gene_names = draw(st.lists(genes, min_size=n_vars, max_size=n_vars, unique_by=str.upper if unique else None))
    obs = pd.DataFrame(index=[f"c{i}" for i in range(n_obs)])
    for column in draw(st.lists(st.sampled_from(["cell_type", "donor", "depth", "flag", "n", "empty"]), unique=True, max_size=4)):
        kind = draw(st.sampled_from(["categorical", "text", "float", "int", "bool"]))
        if kind in ("categorical", "text"):
            values = draw(st.lists(st.sampled_from([*ODD_TEXT, None]), min_size=n_obs, max_size=n_obs))  # None: NaN
            obs[column] = pd.Categorical(values) if kind == "categorical" else values
        elif kind == "float":
            obs[column] = np.array(draw(st.lists(st.sampled_from(ODD_VALUES), min_size=n_obs, max_size=n_obs)), dtype=float)
        elif kind == "int":
            obs[column] = np.array(draw(st.lists(st.integers(-5, 5), min_size=n_obs, max_size=n_obs)), dtype=np.int64)
        else:
            obs[column] = np.array(draw(st.lists(st.booleans(), min_size=n_obs, max_size=n_obs)), dtype=bool)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anndata warns about non-unique names; that is the point
        adata = ad.AnnData(X=matrix(n_obs, n_vars), obs=obs, var=pd.DataFrame(index=gene_names))
        if draw(st.booleans()):  # symbols in a var column, CELLxGENE style
            adata.var["feature_name"] = draw(st.lists(genes, min_size=n_vars, max_size=n_vars))
        if draw(st.booleans()):
            adata.layers["counts"] = matrix(n_obs, n_vars)
        if draw(st.booleans()):
            raw_vars = draw(st.integers(0, 6))
            raw_names = draw(st.lists(st.sampled_from(["Gene0", "gene0", "Gene1", "Gene3", "X"]), min_size=raw_vars, max_size=raw_vars))
            adata.raw = ad.AnnData(X=matrix(n_obs, raw_vars), obs=obs, var=pd.DataFrame(index=raw_names))
        if draw(st.booleans()):
            adata.X = None

    kwargs: dict = {"counts_required": draw(st.booleans()), "block_values": draw(st.sampled_from([1, 3, 1024]))}
    if draw(st.booleans()):
        kwargs["gene_name_column"] = draw(st.sampled_from(["feature_name", "absent"]))
    if draw(st.booleans()):
        kwargs["model_genes"] = draw(st.lists(st.sampled_from(["GENE0", "gene1", "Gene2", "GENE9"]), max_size=4))
        kwargs["min_gene_overlap"] = draw(st.sampled_from([0.0, 0.5, 1.0]))
    if draw(st.booleans()):
        column = draw(st.sampled_from([*obs.columns, "absent"]))
        kwargs["required_obs"] = {column: draw(st.none() | st.lists(st.sampled_from(ODD_TEXT + ["True", "-1"]), max_size=2))}
    return adata, kwargs


@bounded(max_examples=60)
@given(case=odd_anndata())
def test_fuzz_h5ad_odd_but_valid_anndata_gets_facts_or_input_validation_error(tmp_path: Path, case) -> None:
    """AnnData that anndata itself writes happily but that is odd (0 cells or genes, NaN/inf/negative
    or fractional values, integer or float16 dtypes, dense/CSR/CSC, duplicate or case-duplicate genes,
    text/categorical/bool obs with empty or unicode values, raw or not, no .X) is answered with facts
    or our own error. Files anndata wrote are never called damaged (so a bug in our own checks cannot
    hide behind the read-error wrapping), and facts are only given for finite, non-negative data."""
    adata, kwargs = case
    path = fresh(tmp_path, ".h5ad")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata.write_h5ad(path)
    result = outcome(path, lambda: validate_h5ad(path, **kwargs))
    if isinstance(result, InputValidationError):
        assert not any(d in result.problem for d in DAMAGED), result.problem
        return
    assert result.n_obs == adata.n_obs > 0
    used = matrix_at(adata, result.matrix_used)  # what the job would read
    values = used.data if sp.issparse(used) else np.asarray(used)
    assert np.isfinite(values.astype(np.float64)).all() and (values >= 0).all()


# -- documents -------------------------------------------------------------------------------------


def _small_pdf() -> bytes:
    """A two-page PDF made by pdfium, one page with an image object, saved uncompressed-ish and small."""
    pdf = pdfium.PdfDocument.new()
    pdf.new_page(200, 300)
    page = pdf.new_page(300, 200)
    image = pdfium.PdfImage.new(pdf)
    image.set_bitmap(pdfium.PdfBitmap.from_pil(Image.new("RGB", (8, 8), (200, 30, 30))))
    image.set_matrix(pdfium.PdfMatrix().scale(50, 50))
    page.insert_obj(image)
    page.gen_content()
    buffer = io.BytesIO()
    pdf.save(buffer)
    return buffer.getvalue()


def _small_image(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (6, 4), (10, 200, 30)).save(buffer, fmt)
    return buffer.getvalue()


SEEDS = {"pdf": _small_pdf(), "png": _small_image("PNG"), "jpeg": _small_image("JPEG")}
MAGIC = [b"%PDF-", b"%PDF-1.7\n", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", b""]


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


@st.composite
def png_headers(draw) -> bytes:
    """PNGs whose chunks are well formed (right lengths and CRCs) but whose header and data lie:
    zero or absurd sizes (Pillow's decompression-bomb limit), invalid bit depths and colour types,
    image data that is junk or too short. Random bytes almost never get past the CRC checks."""
    width = draw(st.sampled_from([0, 1, 7, 640, 100_000, 2**31 - 1]))
    height = draw(st.sampled_from([0, 1, 5, 480, 100_000, 2**31 - 1]))
    depth, colour = draw(st.sampled_from([(8, 2), (16, 6), (1, 0), (4, 3), (8, 4), (7, 2), (8, 9)]))
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, draw(st.sampled_from([0, 1])))
    junk = st.binary(max_size=64)
    data = draw(st.one_of(junk, junk.map(zlib.compress)))
    tail = draw(st.sampled_from([b"", _chunk(b"IEND", b"")]))
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + tail


def documents() -> st.SearchStrategy[bytes]:
    """Random bytes, magic-prefixed junk, lying PNG headers, and mutated/truncated real PDFs, PNGs, JPEGs."""
    junk = st.binary(max_size=512)
    return st.one_of(
        junk,
        st.builds(lambda magic, rest: magic + rest, st.sampled_from(MAGIC), junk),
        png_headers(),
        st.builds(lambda seed, ops: mutate(SEEDS[seed], ops), st.sampled_from(sorted(SEEDS)), mutations()),
    )


def test_fuzz_document_seeds_are_good() -> None:
    """The fuzz mutates real documents: each seed opens and has the pages it should."""
    reader = DocumentReader(OcrSettings())
    assert reader.check(SEEDS["pdf"], "seed.pdf") == 2
    assert reader.check(SEEDS["png"], "seed.png") == 1
    assert reader.check(SEEDS["jpeg"], "seed.jpg") == 1


@bounded(max_examples=400)
@given(data=documents())
def test_fuzz_document_check_raises_only_document_errors(data: bytes) -> None:
    """Whatever bytes arrive under a document URI, ``check`` answers a page count within the limit
    or a DocumentError naming the document: pdfium and Pillow errors must not escape it, because
    check is what stops a bad document before any page is sent to the OCR service."""
    uri = "gs://lab/fuzzed.pdf"
    try:
        pages = DocumentReader(OcrSettings(max_pages=3)).check(data, uri)
    except DocumentError as error:
        assert str(error).startswith(f"{uri}: ")
        note("rejected: " + str(error).removeprefix(f"{uri}: ").split("(")[0])
        return
    note("accepted")
    assert 1 <= pages <= 3
