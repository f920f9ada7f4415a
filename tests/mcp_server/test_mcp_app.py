"""The MCP App: the viewer resource as the extension wants it, and the viewer itself in headless
Chromium inside a small host page that speaks the host side of the Apps bridge, its buttons
calling this server's tools through that host."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
from pathlib import Path

import pytest
from mcp import Client

from mcp_server.mcp_app import VIEWER_URI
from scripts.servers import ServerProcess
from tests.helpers import CHROMIUM, CHROMIUM_FLAGS

APP_MIME = "text/html;profile=mcp-app"
HOST_PAGE = """<!doctype html><html><body><iframe id="app" width="400" height="500"></iframe>
<script>
const frame = document.getElementById("app");
window.calls = [];
window.addEventListener("message", async (event) => {
  const message = event.data;
  const reply = (body) =>
    frame.contentWindow.postMessage({jsonrpc: "2.0", id: message.id, ...body}, "*");
  if (message.method === "ui/initialize") {
    reply({result: {protocolVersion: "2026-01-26", hostInfo: {name: "test-host", version: "1"},
      hostCapabilities: {serverTools: {}},
      hostContext: {theme: "dark",
                    styles: {variables: {"--color-text-primary": "rgb(230, 231, 232)"}}}}});
  } else if (message.method === "ui/notifications/initialized") {
    frame.contentWindow.postMessage({jsonrpc: "2.0", method: "ui/notifications/tool-result",
      params: window.firstResult}, "*");
  } else if (message.method === "tools/call") {
    window.calls.push(message.params.name);
    reply({result: JSON.parse(await window.hostCallTool(message.params.name,
                                                        JSON.stringify(message.params.arguments)))});
  }
});
</script></body></html>"""


def _call(url: str, name: str, arguments: dict) -> dict:
    async def scenario():
        async with Client(f"{url}/mcp") as client:
            result = await client.call_tool(name, arguments)
            return result.model_dump(mode="json", by_alias=True, exclude_none=True)

    # Playwright's sync API runs its own loop in this thread: the client gets one of its own.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, scenario()).result(timeout=120)


def test_the_viewer_is_a_ui_resource_with_its_csp_and_three_tools_name_it(
    mcp_server: ServerProcess,
) -> None:
    async def scenario():
        async with Client(f"{mcp_server.url}/mcp") as client:
            listed = {str(r.uri): r for r in (await client.list_resources()).resources}
            read = await client.read_resource(VIEWER_URI)
            tools = {t.name: t for t in (await client.list_tools()).tools}
            return listed, read, tools

    listed, read, tools = asyncio.run(scenario())
    assert listed[VIEWER_URI].mime_type == APP_MIME
    (content,) = read.contents
    assert content.mime_type == APP_MIME
    ui = content.meta["ui"] if content.meta else listed[VIEWER_URI].meta["ui"]
    assert ui["csp"] == {"connectDomains": [], "resourceDomains": []}
    assert "http://" not in content.text and "https://" not in content.text
    for name in ("generate_image", "edit_image", "get_generation"):
        assert tools[name].meta["ui"]["resourceUri"] == VIEWER_URI, name
    assert tools["list_models"].meta is None or "ui" not in tools["list_models"].meta


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM} (make browser)")
def test_the_viewer_shows_the_result_and_its_buttons_redraw_through_the_host(
    default_mcp_server: ServerProcess,
) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    mcp_server = default_mcp_server
    prompt = "a large yellow star in the center on a purple background"
    first = _call(mcp_server.url, "generate_image", {"prompt": prompt, "seed": 5})
    viewer = asyncio.run(_read_viewer(mcp_server.url))
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page()

        def host_call_tool(name: str, args: str) -> str:
            return json.dumps(_call(mcp_server.url, name, json.loads(args)))

        page.expose_function("hostCallTool", host_call_tool)
        page.set_content(HOST_PAGE)
        page.evaluate("(result) => { window.firstResult = result; }", first)
        page.eval_on_selector("#app", "(frame, html) => { frame.srcdoc = html; }", viewer)
        app = page.frame_locator("#app")
        app.locator("#actions:not([hidden])").wait_for(timeout=30_000)
        assert "seed 5" in app.locator("#details").inner_text()
        assert app.locator("#edit-row").is_hidden() and app.locator("#mask").is_hidden()
        assert app.locator("#image").get_attribute("src").startswith("data:image/")
        # The host's theme reached the page.
        color = app.locator("#details").evaluate(
            "() => getComputedStyle(document.documentElement)"
            ".getPropertyValue('--color-text-primary')"
        )
        assert color.strip() == "rgb(230, 231, 232)"
        app.locator("#larger").click()
        app.locator("#actions:not([hidden])").wait_for(timeout=60_000)
        if shots := os.environ.get("PLAYGROUND_SCREENSHOTS"):
            page.locator("#app").screenshot(path=str(Path(shots) / "mcp-app.png"))
        assert "256x256, seed 5" in app.locator("#details").inner_text()
        calls = page.evaluate("window.calls")
        assert calls[0] == "start_generation" and set(calls[1:]) == {"get_generation"}
        browser.close()


async def _read_viewer(url: str) -> str:
    async with Client(f"{url}/mcp") as client:
        return (await client.read_resource(VIEWER_URI)).contents[0].text
