"""A run as a user sees it in a real browser (Debian's chromium, headless): the run page and the
report artifact in the Prefect UI, the plot and the HTML report through the links the artifacts
give, and the API's /docs, all with nothing leaving loopback.

The run's question (conftest.QUESTION) carries ``<script>``, an ``<img onerror>`` and a markdown
heading claiming a trained model: each page must show it as text, run none of it, and keep the
real untrained-model warning first.
"""

from __future__ import annotations

import pytest
from playwright.sync_api import Locator, Page

from deployments.local_stack import LocalStack
from tests.browser.browsing import Browsing, heading_texts, images, log_in, markup_that_could_run, visible_text
from tests.browser.conftest import FAKE_CLAIM, IMG, SCRIPT, UNTRAINED_WARNING, artifact

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

WARNING_HEADING = "Untrained model"  # how the report's first heading starts for an untrained checkpoint


def assert_question_shown_as_text(text: str, headings: list[str]) -> None:
    """The question's markup appears literally, and its fake claim is no heading of its own."""
    for markup in (SCRIPT, IMG, FAKE_CLAIM):
        assert markup in text, f"{markup!r} is not shown as text"
    forged = [h for h in headings if h.startswith(FAKE_CLAIM.removeprefix("# "))]
    assert forged == [], f"the question forged headings: {forged}"


def run_files(stack: LocalStack, run: dict) -> str:
    """Where the API serves this run's outputs: every link to a plot or report must start so."""
    return f"{stack.api_url}/runs/{run['id']}/files/"


def open_run_page(page: Page, stack: LocalStack, run: dict) -> None:
    """Log in to the Prefect UI, then open the run's page (the link GET /runs gives)."""
    log_in(page, stack.ui_url, stack.auth_string)
    page.goto(run["ui_url"])
    page.get_by_text(run["name"]).first.wait_for()


def artifact_card(page: Page, key: str) -> Locator:
    """The card of artifact ``key`` on the run page's Artifacts tab."""
    page.locator("li.p-tab", has_text="Artifacts").click()
    card = page.locator(".artifact-card").filter(has=page.locator(".artifact-card__title", has_text=key))
    card.wait_for()
    return card


def open_artifact_link(browsing: Browsing, stack: LocalStack, run: dict, key: str) -> Page:
    """Click the link on artifact ``key``'s page, as a user would, and return the tab it opens. The
    link must lead to this run's files on the API (not a file:// URL a browser refuses)."""
    page = browsing.new_page()
    log_in(page, stack.ui_url, stack.auth_string)
    page.goto(artifact(run, key)["ui_url"])
    page.get_by_text("Show raw data").wait_for()  # the artifact's data has arrived and rendered
    browsing.screenshot(page, f"artifact-{key}")
    hrefs = [a.get_attribute("href") or "" for a in page.locator(".markdown-renderer a").all()]
    files = run_files(stack, run)
    shown = page.locator(".markdown-renderer").all_inner_texts()
    assert [h for h in hrefs if h.startswith(files)], f"artifact {key} links no file on the API: {hrefs}; shows {shown}"
    with page.expect_popup() as opened:
        page.locator(f'.markdown-renderer a[href^="{files}"]').first.click()
    tab = opened.value
    tab.wait_for_load_state("load")
    assert tab.url.startswith(files), tab.url
    return tab


def test_run_page_shows_the_report_card_with_the_warning_and_the_question_as_text(
    stack: LocalStack, forged_run: dict, browsing: Browsing
) -> None:
    page = browsing.new_page()
    open_run_page(page, stack, forged_run)
    card = artifact_card(page, "analysis-report")
    browsing.screenshot(page, "run-page-artifacts")

    text = card.inner_text()
    assert "UNTRAINED model" in text, f"the report's card on the run page hides the untrained model: {text!r}"
    assert_question_shown_as_text(text, [t.strip() for t in card.locator("h1, h2, h3, h4, h5, h6").all_inner_texts()])
    assert card.locator("img").count() == 0, "the question's <img> became an image on the run page"
    assert "\\" not in text, f"an escape shows as a stray backslash: {text!r}"
    browsing.assert_nothing_ran(page)


def test_run_page_shows_the_gpu_jobs_progress(stack: LocalStack, forged_run: dict, browsing: Browsing) -> None:
    """The GPU job runs in a subflow; its progress must show on the run the user opened, finished."""
    page = browsing.new_page()
    open_run_page(page, stack, forged_run)
    page.locator("li.p-tab", has_text="Artifacts").click()
    progress = page.locator(".artifact-card").filter(has_text="PROGRESS").filter(has_text="GPU job")
    progress.first.wait_for()
    browsing.screenshot(page, "run-page-progress")

    assert "SUCCEEDED" in progress.first.inner_text(), progress.all_inner_texts()
    browsing.assert_nothing_ran(page)


def open_report_artifact(page: Page, stack: LocalStack, run: dict) -> None:
    """From the run page, click the report's card (it opens the artifact's page) and wait for the report."""
    open_run_page(page, stack, run)
    artifact_card(page, "analysis-report").click()
    page.wait_for_url(f"**/artifacts/artifact/{artifact(run, 'analysis-report')['id']}")
    page.get_by_text(UNTRAINED_WARNING).wait_for()


def test_report_artifact_puts_the_real_warning_first_and_shows_the_question_as_text(
    stack: LocalStack, forged_run: dict, browsing: Browsing
) -> None:
    page = browsing.new_page()
    open_report_artifact(page, stack, forged_run)
    browsing.screenshot(page, "report-artifact")

    report_headings = heading_texts(page, ".markdown-renderer")
    assert report_headings and report_headings[0].startswith(WARNING_HEADING), report_headings
    assert_question_shown_as_text(visible_text(page), heading_texts(page))
    assert page.locator(".markdown-renderer img[src='x']").count() == 0, "the question's <img> became an image"
    browsing.assert_nothing_ran(page)


def test_report_artifact_shows_every_text_as_written(stack: LocalStack, forged_run: dict, browsing: Browsing) -> None:
    """Nothing in this run has a backslash: one on the page is an escape the UI did not undo (Prefect's
    renderer shows link text as written, so ``predictions\\_vs\\_query.png`` once showed there)."""
    page = browsing.new_page()
    open_report_artifact(page, stack, forged_run)

    lines = [line for text in page.locator(".markdown-renderer").all_inner_texts() for line in text.splitlines()]
    assert [line for line in lines if "\\" in line] == [], "escapes show as stray backslashes"
    browsing.assert_nothing_ran(page)


def test_report_artifact_shows_the_plot_from_the_api(stack: LocalStack, forged_run: dict, browsing: Browsing) -> None:
    page = browsing.new_page()
    open_report_artifact(page, stack, forged_run)
    shown = images(page, ".markdown-renderer img")
    page.locator(".markdown-renderer img").first.scroll_into_view_if_needed()  # the UI scrolls inside itself
    browsing.screenshot(page, "report-artifact-plot")

    # The only image is the plot, served by the API, and it loaded.
    assert shown, "the report artifact shows no plot"
    for image in shown:
        assert image["src"].startswith(run_files(stack, forged_run)), f"an image not from the run's files: {image}"
        assert image["width"] > 0, f"an image did not load: {image}"
    browsing.assert_nothing_ran(page)


def test_plot_opens_from_its_artifact_and_loads(stack: LocalStack, forged_run: dict, browsing: Browsing) -> None:
    tab = open_artifact_link(browsing, stack, forged_run, "prediction-plot")
    tab.locator("img").first.wait_for()
    (plot,) = images(tab)
    browsing.screenshot(tab, "plot")

    assert plot["width"] > 0 and plot["height"] > 0, f"the plot did not load: {plot}"
    browsing.assert_nothing_ran(tab)


def test_html_report_opens_from_its_artifact_and_runs_nothing(
    stack: LocalStack, forged_run: dict, browsing: Browsing
) -> None:
    tab = open_artifact_link(browsing, stack, forged_run, "report-html")
    tab.get_by_text(UNTRAINED_WARNING).wait_for()
    shown = images(tab)
    browsing.screenshot(tab, "report-html")

    headings = heading_texts(tab)
    assert headings and headings[0].startswith(WARNING_HEADING), headings
    assert_question_shown_as_text(visible_text(tab), headings)
    assert markup_that_could_run(tab) == [], "the report carries script or event handlers"
    # The plot and a volcano per context are embedded in the page; nothing else became an image.
    assert len(shown) >= 2 and {i["src"][:22] for i in shown} == {"data:image/png;base64,"}, shown
    assert all(i["width"] > 0 for i in shown), f"an embedded figure did not load: {shown}"
    browsing.assert_nothing_ran(tab)


def test_html_report_shows_the_score_card_before_the_plan(
    stack: LocalStack, forged_run: dict, browsing: Browsing
) -> None:
    """What a biologist reads first: every component with its score or 'not assessed', and the composite."""
    tab = open_artifact_link(browsing, stack, forged_run, "report-html")
    tab.get_by_text(UNTRAINED_WARNING).wait_for()
    headings = heading_texts(tab)
    assert headings.index("Score card") < headings.index("Plan"), headings

    card = tab.locator("table").first
    rows = {r[0]: r[1] for r in (row.split("\t") for row in card.inner_text().splitlines()[1:]) if len(r) > 1}
    browsing.screenshot(tab, "report-html-score-card")
    components = ["pathway coherence", "target activation", "identity preservation", "document support", "backtest"]
    assert list(rows)[:5] == components and "composite" in rows, rows
    assert rows["document support"] == "not assessed"  # no documents: never a number
    assert rows["target activation"] == "not assessed"  # nothing expected of single genes
    assert rows["identity preservation"].endswith("/ 10"), rows  # the query's own markers, from the data


def test_api_docs_render_with_no_internet(stack: LocalStack, browsing: Browsing) -> None:
    page = browsing.new_page()
    page.goto(f"{stack.api_url}/docs")
    post_runs = page.locator(".opblock-post").filter(has=page.locator('[data-path="/runs"]'))
    post_runs.wait_for()
    browsing.screenshot(page, "api-docs")

    assert "POST" in post_runs.inner_text()
    operations = page.locator(".opblock-summary-path").all_inner_texts()
    assert {"/runs", "/runs/{run_id}", "/healthz"} <= {o.replace("\u200b", "") for o in operations}, operations
    browsing.assert_nothing_ran(page)
