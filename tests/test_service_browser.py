"""The search page in a real browser, against the real server.

A module fixture starts ``python -m visual_search.service serve`` on a free port with a
fresh data directory and the committed sample as its gallery; headless Chromium (Debian's
``/usr/bin/chromium``, driven by Playwright) then uses the page as a person would: upload
a query, drag a crop box, search, click a result ("more like this"), and search by text.
The click must reach the server's click log, which the test reads straight from the
SQLite catalog.

Playwright's own browser download is not used (nor needed): the test skips, saying why,
when the ``playwright`` package or ``/usr/bin/chromium`` is missing.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest
from live_server import OPENER, start_server, stop_server
from PIL import Image

from visual_search.data import CLASS_NAMES, load_sample
from visual_search.topics.__main__ import main as topics_cli

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",  # the tests may run as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-proxy-server",  # the server is on 127.0.0.1: never send the page's requests to a proxy
]
STARTUP_TIMEOUT_S = 120  # the server embeds the sample gallery before it answers /health
TIMEOUT_MS = 20_000  # the longest any single wait in the page may take

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:
    sync_playwright = None

if sync_playwright is None:
    pytest.skip(
        "the browser test needs the Python package playwright (in requirements.lock: `make install`; only the package, the browser is Debian's chromium)",
        allow_module_level=True,
    )
if not CHROMIUM.exists():
    pytest.skip(
        f"the browser test needs Chromium at {CHROMIUM}: `make test` installs Debian's chromium when run as root, or run `sudo apt-get install chromium`",
        allow_module_level=True,
    )

@dataclass
class Server:
    url: str
    data_dir: Path

    def get(self, path: str, timeout: float = 5) -> bytes:
        with OPENER.open(self.url + path, timeout=timeout) as response:
            return response.read()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("service") / "data"
    text_encoder = data_dir.parent / "text_encoder.pt"  # chapter 11's text tower, so the page offers text search
    assert topics_cli(["fit-text", "--data", "sample", "--steps", "150", "--out", str(text_encoder)]) == 0
    process, url = start_server(data_dir, gallery="sample", timeout=STARTUP_TIMEOUT_S, extra=["--text-encoder", str(text_encoder)])
    try:
        yield Server(url, data_dir)
    finally:
        stop_server(process)  # SIGTERM: let it close the catalog cleanly


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1100, "height": 800})
    context.set_default_timeout(TIMEOUT_MS)
    context.add_init_script(RECORD_FORMS)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))  # an uncaught exception in app.js
    page.goto(server.url + "/")
    yield page
    context.close()
    assert not errors, f"app.js raised: {errors}"


@pytest.fixture(scope="module")
def query_png(tmp_path_factory) -> Path:
    """A query from the committed sample (a test-split image, so not in the gallery), as a PNG file."""
    path = tmp_path_factory.mktemp("query") / "query.png"
    Image.fromarray(load_sample().query_images[0]).save(path)
    return path


def _wait_for_search(page, count: int) -> None:
    """Wait until the page has finished its ``count``-th search and shows its results."""
    page.wait_for_function(
        "n => document.body.dataset.searches === String(n) && document.body.dataset.state === 'done'",
        arg=count,
        timeout=TIMEOUT_MS,
    )


# Chromium does not show a test the body of a request that carries a file (Playwright's
# post_data is None for it), so the page's fetch() is wrapped to record the form it sends:
# text fields as they are, files as their bytes.
RECORD_FORMS = """
window.sentForms = [];
const realFetch = window.fetch;
window.fetch = async (url, options = {}) => {
  if (options.body instanceof FormData) {
    const fields = {};
    for (const [name, value] of options.body) {
      fields[name] = typeof value === "string" ? value : Array.from(new Uint8Array(await value.arrayBuffer()));
    }
    window.sentForms.push({ url: String(url), fields });
  }
  return realFetch(url, options);
};
"""


def _sent_forms(page) -> list[dict]:
    """The forms the page has posted so far, each ``{name: str or bytes}``."""
    return [{k: v if isinstance(v, str) else bytes(v) for k, v in form["fields"].items()} for form in page.evaluate("window.sentForms")]


def test_crop_search_and_more_like_this(page, server, query_png):
    # Everything the page asks of the server, in order: the click must be logged before the next search.
    requests = []
    page.on("request", lambda r: requests.append((r.method, r.url.removeprefix(server.url))))

    page.set_input_files("#file", str(query_png))
    expect(page.locator("#box-label")).to_contain_text("28 x 28")  # decoded and drawn

    # Drag a crop box from 20 % to 80 % across and 90 % down the canvas: in the 28 x 28 image
    # that is x 5.6 -> 22.4 and y 5.6 -> 25.2, rounded to the box 6,6,22,25 (right/bottom exclusive).
    canvas = page.locator("#query-canvas").bounding_box()
    page.mouse.move(canvas["x"] + 0.2 * canvas["width"], canvas["y"] + 0.2 * canvas["height"])
    page.mouse.down()
    page.mouse.move(canvas["x"] + 0.5 * canvas["width"], canvas["y"] + 0.5 * canvas["height"], steps=4)
    page.mouse.move(canvas["x"] + 0.8 * canvas["width"], canvas["y"] + 0.9 * canvas["height"], steps=4)
    page.mouse.up()
    label = page.locator("#box-label")
    expect(label).to_have_attribute("data-box", "6,6,22,25")
    expect(label).to_contain_text("left 6, top 6, right 22, bottom 25")

    page.fill("#k", "12")
    page.click("#search")
    _wait_for_search(page, 1)
    (form,) = _sent_forms(page)
    assert form["box"] == "6,6,22,25"
    assert form["k"] == "12"
    assert form["user"], "the page sends no user id"
    assert form["image"] == query_png.read_bytes(), "the upload is not the chosen file"

    cards = page.locator("#results .result")
    assert 1 <= cards.count() <= 12
    assert cards.first.get_attribute("data-rank") == "1"
    assert page.text_content("#error") == ""
    status = page.text_content("#status")
    for word in ("embed", "search", "rerank", "Dropped", "Model"):
        assert word in status, f"#status does not mention {word!r}: {status!r}"
    user = form["user"]

    # "More like this": click the best result; the page logs the click, then searches with that image.
    first_query_id = page.get_attribute("#results", "data-query-id")
    image_id = int(cards.first.get_attribute("data-id"))
    cards.first.click()
    _wait_for_search(page, 2)
    form = _sent_forms(page)[1]
    assert form["image"] == server.get(f"/images/{image_id}"), "the new query is not the clicked image"
    assert "box" not in form, "the crop of the old query was sent with the new one"
    assert form["user"] == user, "the user id changed between two searches"
    posts = [path for method, path in requests if method == "POST"]
    assert posts == ["/search", "/clicks", "/search"], posts
    assert page.get_attribute("#results", "data-query-id") != first_query_id
    assert page.locator("#results .result").count() >= 1

    # The click reached the click log (read-only: the server still has the catalog open).
    db = server.data_dir / "catalog.sqlite3"
    assert db.exists(), f"no catalog at {db}: {sorted(p.name for p in server.data_dir.iterdir())}"
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        clicks = con.execute("SELECT query_id, image_id, rank FROM clicks").fetchall()
        users = [u for (u,) in con.execute("SELECT user FROM queries")]
    finally:
        con.close()
    assert any(str(q) == first_query_id and i == image_id and r == 1 for q, i, r in clicks), (first_query_id, image_id, clicks)
    assert len(users) >= 2 and users.count(user) >= 2, (user, users)  # both searches, logged with the page's user id


def test_bad_upload_shows_the_error_and_the_page_recovers(page):
    page.set_input_files("#file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"this is not an image\n"}])
    with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/search")) as answer:
        page.click("#search")
    page.wait_for_selector("body[data-state=error]", timeout=TIMEOUT_MS)
    assert answer.value.status == 400
    detail = answer.value.json()["detail"]
    error = page.locator("#error")
    expect(error).to_contain_text(detail)  # the server's reason, shown as it came
    assert page.locator("#results .result").count() == 0

    # The page still works: a random gallery image as the query, then a search.
    page.click("#random")
    expect(page.locator("#box-label")).to_contain_text("28 x 28")
    page.wait_for_selector("body[data-state=idle]", timeout=TIMEOUT_MS)
    page.click("#search")
    _wait_for_search(page, 1)
    expect(error).to_have_text("")
    assert page.locator("#results .result").count() >= 1


def test_text_search_from_the_page(page, server):
    controls = page.locator("#text-controls")
    expect(controls).to_be_visible()  # hidden in the HTML; shown because /stats says text_search
    with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/search/text")) as answer:
        page.fill("#text-query", "sandal")
        page.press("#text-query", "Enter")
    _wait_for_search(page, 1)
    sent = answer.value.request.post_data_json
    assert sent["query"] == "sandal" and sent["k"] == 20 and sent["user"]
    ids = [int(i) for i in page.locator("#results .result").evaluate_all("cards => cards.map(c => c.dataset.id)")]
    assert len(ids) == 20
    con = sqlite3.connect(f"file:{server.data_dir / 'catalog.sqlite3'}?mode=ro", uri=True, timeout=10)
    try:
        labels = dict(con.execute(f"SELECT id, label FROM images WHERE id IN ({','.join('?' * len(ids))})", ids).fetchall())
    finally:
        con.close()
    sandals = sum(labels[i] == CLASS_NAMES.index("Sandal") for i in ids)
    assert sandals >= 15, f"only {sandals} of 20 results are sandals"  # measured 20 of 20 with this tower

    # A word the tower never saw: the server's 422 detail is shown, and the page keeps working.
    page.fill("#text-query", "zeppelin")
    with page.expect_response(lambda r: r.url.endswith("/search/text")) as answer:
        page.click("#search-text")
    page.wait_for_selector("body[data-state=error]", timeout=TIMEOUT_MS)
    assert answer.value.status == 422
    expect(page.locator("#error")).to_contain_text("zeppelin")
    assert page.locator("#results .result").count() == 0
    page.fill("#text-query", "a dark ankle boot")
    page.click("#search-text")
    _wait_for_search(page, 2)
    expect(page.locator("#error")).to_have_text("")
