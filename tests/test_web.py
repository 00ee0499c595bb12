"""The filmstrip on AutoregressivePropagate and FlowRefine, in Debian's Chromium against a real ComfyUI server.

Chromium is driven headless by Playwright (system browser via executable_path; nothing is downloaded). Without
Chromium the test skips, except under CI=true, where .ci/run installs it and its absence fails the run.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from test_host_workflows import ROOT

pytestmark = pytest.mark.host
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
FRAMES = 6


def _need_browser():
    reason = None
    if CHROMIUM is None:
        reason = "Chromium is not installed (Debian package `chromium`)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            reason = "playwright (Python) is not installed"
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason + "; CI must run the browser test")
        pytest.skip(reason)


def artifacts_dir(tmp_path: Path) -> Path:
    """Where screenshots go: $MAGICPROP_ARTIFACTS (kept), else the test's temporary folder."""
    artifacts = Path(os.environ.get("MAGICPROP_ARTIFACTS", tmp_path))
    artifacts.mkdir(parents=True, exist_ok=True)
    return artifacts


def new_page(pw):
    """A page of Debian's Chromium, headless, 1600x1000 (Playwright gives every launch a new empty profile)."""
    browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
    return browser.new_page(viewport={"width": 1600, "height": 1000})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(comfy_path, tiny_models, bikes, tmp_path_factory):
    """`main.py --cpu --listen 127.0.0.1` with this pack and a test-only node pack under a temporary base dir."""
    _need_browser()
    base = tmp_path_factory.mktemp("comfy-server")
    custom = base / "custom_nodes"
    (custom / "test_nodes").mkdir(parents=True)
    (custom / "comfyui_magicprop").symlink_to(ROOT, target_is_directory=True)
    (custom / "test_nodes" / "__init__.py").write_text(
        f"import sys\nsys.path.insert(0, {str(ROOT / 'tests')!r})\n"
        "from host_nodes import TEST_NODES as NODE_CLASS_MAPPINGS\n"
    )
    (base / "models" / "magicprop").mkdir(parents=True)
    shutil.copy(tiny_models["checkpoint"], base / "models" / "magicprop" / "tiny-propdpm.safetensors")
    shutil.copytree(tiny_models["depth"], base / "models" / "depth_estimation" / "tiny-dpt")
    (base / "input").mkdir()
    shutil.copy(bikes, base / "input" / "video.mp4")
    port = _free_port()
    with open(base / "server.log", "w") as log:  # the server writes to its own copy of the file descriptor
        proc = subprocess.Popen(
            [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--base-directory",
             str(base), "--disable-auto-launch", "--preview-method", "latent2rgb", "--database-url",
             "sqlite:///:memory:"],
            cwd=comfy_path, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url + "/system_stats", timeout=2)
            break
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("ComfyUI did not start: " + (base / "server.log").read_text()[-3000:])
    if proc.poll() is not None:
        pytest.fail("ComfyUI exited: " + (base / "server.log").read_text()[-3000:])
    yield {"url": url, "base": base, "tiny": tiny_models}
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


STRIP_WORKFLOWS = {  # workflow -> (node with the strip, index of its steps widget value, steps, frame size)
    "magicprop_restyle_video": ("AutoregressivePropagate", 3, 8, None),
    "magicprop_flow_refine": ("FlowRefine", 5, 3, (256, 144)),
}


def tiny_ui_workflow(tiny: dict, name: str = "magicprop_restyle_video") -> dict:
    """A shipped workflow (UI format) with the test's tiny models and a short clip."""
    ui = json.loads((ROOT / "workflows" / f"{name}.json").read_text())
    strip_node, steps_at, steps, size = STRIP_WORKFLOWS[name]
    for node in ui["nodes"]:
        kind, values = node["type"], node["widgets_values"]
        if kind == "CheckpointLoaderSimple":
            node["type"], node["widgets_values"] = "TestTinyCheckpoint", [str(tiny["vae"])]
        elif kind == "ControlNetLoader":
            node["type"], node["widgets_values"] = "TestTinyControlNet", [0]
        elif kind == "CLIPVisionLoader":
            node["type"], node["widgets_values"] = "TestTinyCLIPVision", [str(tiny["clip_vision"])]
        elif kind == "PropDPMLoader":
            values[0] = "tiny-propdpm.safetensors"
        elif kind == "DepthSequence":
            values[0] = "tiny-dpt"
        elif kind == "ImageFromBatch" and node["id"] == 3:
            values[1] = FRAMES
        elif kind == "ImageScale" and size is not None:
            values[1:3] = size
        elif kind == "KSampler":
            values[2] = 2  # steps
        elif kind == strip_node:
            values[steps_at] = steps  # long enough per frame to watch the strip grow
    return ui


@pytest.mark.parametrize("workflow", sorted(STRIP_WORKFLOWS))
def test_filmstrip_grows_live_and_stays(server, tmp_path, workflow):
    from playwright.sync_api import sync_playwright

    strip_node = STRIP_WORKFLOWS[workflow][0]
    artifacts = artifacts_dir(tmp_path)
    errors: list[str] = []
    with sync_playwright() as pw:
        page = new_page(pw)
        page.on("console", lambda m: errors.append(f"console {m.type}: {m.text} @ {m.location.get('url', '')}")
                if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(f"pageerror: {e} {getattr(e, 'stack', '')}"))
        page.goto(server["url"])
        page.wait_for_function("() => window.app && window.app.graph && window.app.extensions", timeout=60_000)
        page.wait_for_function(
            "() => window.app.extensions.some(e => e.name === 'magicprop.filmstrip')", timeout=30_000)
        page.evaluate("async (wf) => { await window.app.loadGraphData(wf); }",
                      tiny_ui_workflow(server["tiny"], workflow))
        for _ in range(2):  # close the first-run template browser so the screenshot shows the graph
            page.keyboard.press("Escape")
            page.wait_for_timeout(300)
        page.evaluate("""(type) => {  // bring the node into view: its DOM widgets mount when visible
            const node = window.app.graph._nodes.find(n => n.type === type);
            window.app.canvas.centerOnNode(node);
            window.app.canvas.setDirty(true, true);
        }""", strip_node)
        page.wait_for_function("() => document.querySelectorAll('.magicprop-filmstrip').length > 0", timeout=30_000)
        page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")
        counts, deadline = [], time.time() + 240
        while time.time() < deadline:
            n = page.evaluate("() => document.querySelectorAll('.magicprop-filmstrip img').length")
            if not counts or counts[-1] != n:
                counts.append(n)
            if n == FRAMES:
                break
            time.sleep(0.05)
        page.wait_for_timeout(1500)  # the strip is kept after the run
        final = page.evaluate("() => [...document.querySelectorAll('.magicprop-filmstrip img')]"
                              ".map(i => [Number(i.dataset.index), i.classList.contains('magicprop-reference')])")
        page.screenshot(path=str(artifacts / f"filmstrip-{strip_node}.png"), full_page=True)
        page.context.browser.close()
    intermediate = [c for c in counts if 0 < c < FRAMES]
    assert len(intermediate) >= 2, counts
    assert [i for i, _ in final] == list(range(FRAMES)), final
    assert [i for i, ref in final if ref] == [0], "the reference (frame 0) is marked"
    ours = [e for e in errors if "magicprop" in e.lower()]
    assert not ours, ours
