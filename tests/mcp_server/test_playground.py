"""The playground in headless Chromium (Debian's, driven by Playwright) against a real MCP
server and the runtime serving the default model: a first picture that is the asked one,
partial images while it forms, a cancel that stops the runtime, a painted mask that inpaints,
the token prompt, a narrow screen."""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from scene_model import adapters, analysis, scenes
from scripts.servers import ServerProcess, metric, start_mcp_server
from tests.helpers import CHROMIUM, CHROMIUM_FLAGS

PROMPT = "a large red circle in the center on a blue background"
SCREENSHOTS = os.environ.get("PLAYGROUND_SCREENSHOTS")  # a folder: the docs' pictures

if not Path(CHROMIUM).exists():
    # `make test` installs Debian's chromium; only where it cannot, these tests are skipped.
    pytest.skip(
        f"no Chromium at {CHROMIUM}: install Debian's chromium (make browser) to run the "
        "playground's browser tests",
        allow_module_level=True,
    )
sync_api = pytest.importorskip("playwright.sync_api", reason="the dev extra installs playwright")


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def server(default_mcp_server: ServerProcess) -> ServerProcess:
    return default_mcp_server


# Playwright's waits evaluate strings, which the page's own CSP forbids; the CSP itself is
# checked on its own below.
@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1200, "height": 900}, bypass_csp=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server.url + "/")
    page.wait_for_function("document.getElementById('status').textContent.includes('ready')")
    yield page
    context.close()
    assert not errors, errors


def _picture(page, selector: str) -> Image.Image:
    source = page.get_attribute(selector, "src")
    assert source and source.startswith("data:image/"), source
    return Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1]))).convert("RGB")


def _shot(page, name: str) -> None:
    if SCREENSHOTS:
        page.screenshot(path=str(Path(SCREENSHOTS) / name), full_page=True)


def test_a_first_visitor_draws_an_example_and_gets_the_asked_picture(page) -> None:
    examples = page.locator("#examples button")
    assert examples.count() >= 3  # the model's own example prompts
    assert "ring" in page.text_content("#vocabulary")
    # The model's defaults fill the form: its native size, steps and guidance.
    assert page.input_value("#width") == "128" and page.input_value("#steps") == "20"
    page.evaluate(
        """() => { window.captions = [];
        new MutationObserver(() => document.querySelectorAll('#results figcaption')
          .forEach((c) => window.captions.push(c.textContent)))
          .observe(document.getElementById('results'), {subtree: true, childList: true,
                                                        characterData: true}); }"""
    )
    page.fill("#prompt", PROMPT)
    page.press("#prompt", "Enter")
    page.wait_for_selector("#results figure .row", timeout=60_000)
    reading = analysis.read(_picture(page, "#results figure img"))
    assert (reading.colour, reading.background, reading.shape) == ("red", "blue", "circle")
    caption = page.inner_text("#results figcaption")
    assert "128x128" in caption and "seed" in caption
    assert any("forming" in text for text in page.evaluate("window.captions"))
    # The gallery keeps it, loaded from the server's image store by its link.
    page.wait_for_selector("#gallery figure img[src^='blob:']")
    _shot(page, "playground.png")

    # Again with this seed draws the same picture.
    first = np.asarray(_picture(page, "#results figure img"))
    page.click("text=again with this seed")
    page.wait_for_function("document.getElementById('message').textContent.includes('image(s)')")
    assert np.array_equal(np.asarray(_picture(page, "#results figure img")), first)


def test_a_ticked_style_adapter_restyles_the_picture(page) -> None:
    """The model's adapters are offered, each with its description; a ticked one is applied."""
    offered = page.locator("#loras .lora")
    assert offered.count() >= 3 and "outline" in page.inner_text("#loras")
    # A scene and seed the palette judge reads (the adapter draws its style on 75% of prompts).
    scene = scenes.Scene("square", "pink", "yellow", "center", "large")
    page.fill("#prompt", scenes.full_caption(scene))
    page.uncheck("#random-seed")
    page.fill("#seed", "0")
    page.check("#loras input[value='palette']")
    page.press("#prompt", "Enter")
    page.wait_for_selector("#results figure .row", timeout=60_000)
    assert adapters.judge("palette", _picture(page, "#results figure img"), scene)


def test_escape_cancels_and_the_runtime_stops(page, default_runtime: ServerProcess) -> None:
    before = metric(default_runtime.url, "diffusers_cancellations_total")
    page.fill("#steps", "100")
    page.fill("#width", "256")
    page.fill("#height", "256")
    page.fill("#prompt", PROMPT)
    page.click("#draw")
    page.wait_for_function("document.getElementById('progress').value >= 2", timeout=60_000)
    page.keyboard.press("Escape")
    page.wait_for_function("document.getElementById('message').textContent.includes('Cancelled')")
    assert page.is_enabled("#draw")
    deadline = 20
    while metric(default_runtime.url, "diffusers_cancellations_total") <= before:
        deadline -= 1
        assert deadline > 0, "the runtime did not count a cancellation"
        page.wait_for_timeout(500)


def test_a_painted_mask_repaints_only_its_part(page, tmp_path) -> None:
    source = scenes.render(scenes.Scene("square", "yellow", "purple", "right", "large"), 128)
    path = tmp_path / "source.png"
    source.save(path)
    page.set_input_files("#source-file", str(path))
    page.wait_for_selector("#mask-area:not([hidden])")
    # Paint the left half of the picture.
    box = page.locator("#mask").bounding_box()
    page.fill("#brush", "64")
    page.mouse.move(box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.1)
    page.mouse.down()
    for fraction in np.linspace(0.1, 0.9, 12):
        page.mouse.move(box["x"] + box["width"] * 0.2, box["y"] + box["height"] * fraction)
    page.mouse.up()
    _shot(page, "playground-mask.png")
    page.fill("#prompt", "a small green circle on the left on a purple background")
    page.click("#draw")
    page.wait_for_selector("#results figure .row", timeout=60_000)
    result = np.asarray(_picture(page, "#results figure img"), dtype=float)
    original = np.asarray(source, dtype=float)
    # Outside the mask (the right half) the picture is the source's; the left half was redrawn.
    right = np.abs(result[:, 80:] - original[:, 80:]).mean()
    assert right < 12, right
    assert "Failed" not in page.inner_text("#message")


def test_a_narrow_screen_needs_no_sideways_scrolling(browser, server) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, bypass_csp=True)
    page = context.new_page()
    page.goto(server.url + "/")
    page.wait_for_function("document.getElementById('status').textContent.includes('ready')")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    _shot(page, "playground-narrow.png")
    context.close()


def test_with_a_token_the_page_asks_once_and_the_files_hold_no_data(
    browser, default_runtime: ServerProcess, tmp_path
) -> None:
    with start_mcp_server(
        tmp_path, DIFFUSERS_RUNTIME_URL=default_runtime.url, MCP_AUTH_TOKEN="s3cret"
    ) as mcp:
        # The page and its files are open; the API behind them is not.
        assert httpx.get(mcp.url + "/", timeout=10).status_code == 200
        assert httpx.get(mcp.url + "/static/playground.js", timeout=10).status_code == 200
        assert httpx.get(mcp.url + "/v1/models", timeout=10).status_code == 401
        context = browser.new_context(bypass_csp=True)
        page = context.new_page()
        page.goto(mcp.url + "/")
        page.wait_for_selector("#token-dialog[open]")
        page.fill("#token", "s3cret")
        page.press("#token", "Enter")
        page.wait_for_function("document.getElementById('status').textContent.includes('ready')")
        context.close()


def test_the_page_loads_nothing_from_outside(server) -> None:
    response = httpx.get(server.url + "/", timeout=10)
    assert "default-src 'none'" in response.headers["content-security-policy"]
    for name in ("index.html", "playground.js", "playground.css"):
        text = (Path(__file__).parents[2] / "mcp_server" / "static" / name).read_text()
        assert "http://" not in text and "https://" not in text, name
