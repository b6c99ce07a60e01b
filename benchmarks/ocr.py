"""How close the LightOnOCR client comes to the service's capacity.

A fake service on 127.0.0.1 works on at most ``capacity`` pages at a time, ``latency`` seconds each,
so no client can read more than ``capacity / latency`` pages per second. The client should keep
it saturated: achieved / capacity >= 0.9. Measured three ways in one run:

- sequential: concurrency 1 (the baseline a naive loop gets);
- send: pre-rendered pages through ``LightOnOcrClient.read_pages`` (the concurrency machinery);
- end to end: a scanned PDF through ``DocumentReader.read`` (render + encode + send, as the task does).

Every request carries a Google ID token from a fake metadata server, as on Cloud Run.

    .venv/bin/python -m benchmarks.ocr [--pages 64 --capacity 8 --latency 1.0]
"""

from __future__ import annotations

import argparse
import os
import time

from google.auth.compute_engine import _metadata

from clients.ocr import DocumentReader, LightOnOcrClient, OcrSettings, PageImage
from clients.ocr.auth import audience_of
from clients.ocr.documents import SourceDocument
from tests.fake_google_identity import FakeGoogleIdentity
from tests.fake_openai_ocr import FakeOcrService
from tests.ocr.conftest import joined_pdf, scanned_pdf


def settings_for(url: str, concurrency: int) -> OcrSettings:
    return OcrSettings(service_url=url, concurrency=concurrency, backoff_s=0.05)


def timed(label: str, pages: int, run, capacity: float) -> tuple[str, float, float]:
    start = time.perf_counter()
    run()
    achieved = pages / (time.perf_counter() - start)
    return label, achieved, achieved / capacity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=256)
    parser.add_argument("--capacity", type=int, default=8, help="pages the fake works on at once")
    parser.add_argument("--latency", type=float, default=1.0, help="seconds per page in the fake")
    parser.add_argument(
        "--concurrency", type=int, default=0,
        help="client concurrency (default: 2 x capacity, so a page is always queued while one is encoded)",
    )
    args = parser.parse_args()
    concurrency = args.concurrency or 2 * args.capacity

    with FakeGoogleIdentity() as identity, FakeOcrService(
        latency_s=args.latency, capacity=args.capacity, read_markers=False
    ) as fake:
        # Tokens from the fake metadata server, never the real one.
        os.environ["GCE_METADATA_IP"] = identity.host
        _metadata._GCE_METADATA_HOST = identity.host
        os.environ.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
        fake.require_token = lambda token: identity.accepts(token, audience_of(fake.url))

        pdf = scanned_pdf(8)  # 8 distinct scanned pages, repeated to --pages
        with SourceDocument(pdf, "bench.pdf", max_pages=100) as doc:
            rendered = [doc.render(i, 1540) for i in range(8)]
        images = [PageImage("bench.pdf", n + 1, rendered[n % 8]) for n in range(args.pages)]
        long_pdf = joined_pdf(*([pdf] * max(1, args.pages // 8)))
        e2e_pages = 8 * max(1, args.pages // 8)

        capacity = fake.capacity_pages_per_s
        baseline_pages = max(2, min(args.pages, 2 * args.capacity) // 4)
        rows = [
            timed("sequential (concurrency 1)", baseline_pages,
                  lambda: LightOnOcrClient(settings_for(fake.url, 1)).read_pages(images[:baseline_pages]), capacity),
            timed(f"send (concurrency {concurrency})", args.pages,
                  lambda: LightOnOcrClient(settings_for(fake.url, concurrency)).read_pages(images), capacity),
            timed(f"end to end PDF (concurrency {concurrency})", e2e_pages,
                  lambda: DocumentReader(settings_for(fake.url, concurrency)).read(long_pdf, "bench.pdf"), capacity),
        ]
        tokens = len(identity.issued)

    print(f"fake service: capacity {args.capacity} pages at once x {args.latency:.2f} s/page "
          f"= {capacity:.2f} pages/s; {args.pages} pages; max in flight seen {fake.max_in_flight}; "
          f"ID tokens fetched: {tokens} (one per client)")
    print(f"{'mode':<36} {'pages/s':>8} {'ratio to capacity':>18}")
    for label, achieved, ratio in rows:
        print(f"{label:<36} {achieved:8.2f} {ratio:18.2f}")
    start = time.perf_counter()
    with SourceDocument(long_pdf, "bench.pdf", max_pages=10_000) as doc:
        for index in range(16):
            doc.render(index, 1540)
    print(f"(rendering alone, the one serial step of end to end: {16 / (time.perf_counter() - start):.1f} pages/s)")
    send_ratio = rows[1][2]
    print(f"speed-up over sequential: {rows[1][1] / rows[0][1]:.1f}x; send ratio {'>=' if send_ratio >= 0.9 else '<'} 0.9")


if __name__ == "__main__":
    main()
