"""The pack's templates in ComfyUI's workflow browser, in Debian's Chromium against a real ComfyUI server: five cards
with their pictures, and `magicprop_flow_restyle` loaded from the browser and run (with the test's tiny models).

Screenshots go to $MAGICPROP_ARTIFACTS when set: templates-browser.png (the pack's page of the browser) and
flow-restyle-after-run.png (the graph after the run).
"""

from __future__ import annotations

import json
import time
import urllib.request

import pytest
from test_host_workflows import ROOT
from test_web import FRAMES, artifacts_dir, new_page, server  # noqa: F401  (server: the module's fixture)

pytestmark = pytest.mark.host
PACK = "comfyui_magicprop"  # the folder name test_web's server gives the pack
NAMES = sorted(p.stem for p in (ROOT / "workflows").glob("*.json"))


def tiny_flow_restyle(tiny: dict) -> dict:
    """magicprop_flow_restyle (UI format) with the tiny checkpoint, ControlNet and depth model and FRAMES frames."""
    ui = json.loads((ROOT / "workflows" / "magicprop_flow_restyle.json").read_text())
    for node in ui["nodes"]:
        kind, values = node["type"], node["widgets_values"]
        if kind == "CheckpointLoaderSimple":
            node["type"], node["widgets_values"] = "TestTinyCheckpoint", [str(tiny["vae"])]
            node["properties"].pop("models", None)
        elif kind == "ControlNetLoader":
            node["type"], node["widgets_values"] = "TestTinyControlNet", [0]
            node["properties"].pop("models", None)
        elif kind == "DepthSequence":
            values[0] = "tiny-dpt"
        elif kind == "ImageFromBatch" and node["id"] == 3:
            values[1] = FRAMES
        elif kind == "KSampler":
            values[2] = 2  # steps
    ui.pop("models", None)
    return ui


def _wait_done(url: str, timeout: float = 300) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        history = json.loads(urllib.request.urlopen(url + "/history", timeout=5).read())
        queue = json.loads(urllib.request.urlopen(url + "/queue", timeout=5).read())
        if history and not queue["queue_running"] and not queue["queue_pending"]:
            return history
        time.sleep(0.5)
    pytest.fail("the run did not finish in time")


def test_templates_in_the_browser_and_flow_restyle_runs(server, tmp_path):  # noqa: F811
    from playwright.sync_api import sync_playwright

    artifacts = artifacts_dir(tmp_path)
    messages: list[str] = []
    with sync_playwright() as pw:
        page = new_page(pw)
        page.on("console", lambda m: messages.append(f"{m.type}: {m.text}"))
        pictures: dict[str, int] = {}
        page.on("response", lambda r: pictures.__setitem__(r.url.rsplit("/", 1)[1], r.status)
                if f"/workflow_templates/{PACK}/" in r.url and r.url.endswith(".jpg") else None)
        page.goto(server["url"])
        page.wait_for_function("() => window.app && window.app.graph && window.app.extensionManager", timeout=60_000)
        for _ in range(2):  # close the first-run template browser
            page.keyboard.press("Escape")
            page.wait_for_timeout(300)

        page.evaluate("async () => { await window.app.extensionManager.command.execute('Comfy.BrowseTemplates'); }")
        page.get_by_text(PACK, exact=True).first.click()
        for name in NAMES:
            page.locator(f"h3[title='{name}']").first.wait_for(timeout=30_000)
        page.wait_for_function(  # the cards' pictures (the browser hands them to <img> as blobs)
            "() => [...document.querySelectorAll('img')].filter(i => i.complete && i.naturalWidth === 320).length >= 5",
            timeout=30_000)
        page.wait_for_timeout(500)
        page.screenshot(path=str(artifacts / "templates-browser.png"))

        page.locator("h3[title='magicprop_flow_restyle']").first.click()  # load it from the browser
        page.wait_for_function("() => window.app.graph._nodes.some(n => n.type === 'FlowPropagate')", timeout=30_000)
        loaded = page.evaluate("() => window.app.graph._nodes.map(n => n.type)")
        for _ in range(2):  # close the missing-models panel (the server has none of the full-size models)
            page.keyboard.press("Escape")
            page.wait_for_timeout(300)

        # the same graph with the test's tiny models, run
        page.evaluate("async (wf) => { await window.app.loadGraphData(wf); }", tiny_flow_restyle(server["tiny"]))
        page.wait_for_timeout(500)
        page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")
        history = _wait_done(server["url"])
        page.wait_for_timeout(2000)  # the previews reach the nodes
        layout = page.evaluate("""() => {
            const g = window.app.graph, c = window.app.canvas;
            const flow = g._nodes.find(n => n.type === 'OpticalFlowSequence');
            const prop = g._nodes.find(n => n.type === 'FlowPropagate');
            c.ds.scale = 0.62;
            c.ds.offset = [-flow.pos[0] + 1000, -flow.pos[1] + 200];
            c.setDirty(true, true);
            return {flow_bottom: flow.pos[1] + flow.size[1], prop_top: prop.pos[1] - 30,
                    flow_images: (flow.imgs || []).length};
        }""")
        page.wait_for_timeout(800)
        page.screenshot(path=str(artifacts / "flow-restyle-after-run.png"))
        page.context.browser.close()

    assert pictures == {f"{n}.jpg": 200 for n in NAMES}, pictures
    assert "FlowPropagate" in loaded and "MarkdownNote" in loaded
    assert not [m for m in messages if "Invalid workflow" in m], messages
    (run,) = history.values()
    assert run["status"]["status_str"] == "success", run["status"]
    assert layout["flow_bottom"] < layout["prop_top"], layout  # its preview does not cover FlowPropagate's inputs
