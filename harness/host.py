"""Running graphs in the real ComfyUI, in-process (PromptExecutor), with the pack loaded as a custom node.

Used by the host tests and the host benchmarks (`bench/`); see the README's development notes for COMFYUI_PATH.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
"""The pack's root (the repository)."""

PACK_NAME = "comfyui_magicprop"
MODEL_FOLDERS = ("magicprop", "depth_estimation", "vae", "clip_vision", "loras", "controlnet", "checkpoints")


def find_comfyui() -> Path | None:
    """$COMFYUI_PATH, else the ComfyUI this pack is installed in (the parent of custom_nodes/)."""
    env = os.environ.get("COMFYUI_PATH")
    if env:
        return Path(env).expanduser().resolve()
    if ROOT.parent.name == "custom_nodes":
        return ROOT.parent.parent
    return None


def enter_comfyui(path: Path, cpu: bool = True, pytorch_attention: bool = False) -> None:
    """Put the host on sys.path and set its arguments, before anything imports comfy.model_management.
    pytorch_attention: as the host's --use-pytorch-cross-attention (its default on CPU is sub-quadratic attention)."""
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    from comfy.cli_args import args

    args.cpu = cpu
    args.fp32_text_enc = cpu
    args.use_pytorch_cross_attention = pytorch_attention
    import utils.extra_config  # noqa: F401  (as main.py does first: ComfyUI's utils package, before any module
    # that would otherwise leave comfy/utils.py registered as a top-level "utils")


class FakeServer:
    """What PromptExecutor needs of PromptServer; keeps every message it was sent."""

    def __init__(self) -> None:
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.sockets_metadata: dict = {}
        self.messages: list[tuple[str, Any]] = []

    def send_sync(self, event, data, sid=None) -> None:
        self.messages.append((event, data))

    def queue_updated(self) -> None:
        pass


@contextlib.contextmanager
def progress_hook(hook):
    """ComfyUI's global progress hook set to `hook(value, total, preview, **kw)` for the `with` block (every progress
    bar a node updates calls it), and unset after it, also when the block raises."""
    import comfy.utils

    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        yield
    finally:
        comfy.utils.set_progress_bar_global_hook(None)


class GraphError(RuntimeError):
    """A graph failed; carries ComfyUI's exception type and message."""

    def __init__(self, node_id: str, exception_type: str, message: str) -> None:
        super().__init__(f"node {node_id} ({exception_type}): {message}")
        self.node_id, self.exception_type, self.message = node_id, exception_type, message


class Host:
    """The real ComfyUI with core extras and this pack loaded; model folders and I/O under `workdir`."""

    def __init__(self, root: Path, workdir: Path) -> None:
        import folder_paths

        import nodes

        self.log_lines: list[str] = []
        handler = _ListHandler(self.log_lines)
        logging.getLogger().addHandler(handler)
        try:
            asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
            custom = workdir / "custom_nodes"
            custom.mkdir(parents=True, exist_ok=True)
            (custom / PACK_NAME).symlink_to(root, target_is_directory=True)
            self.pack_log_start = len(self.log_lines)
            pack_dir = str(custom / PACK_NAME)
            self.loaded = asyncio.run(nodes.load_custom_node(pack_dir, module_parent="custom_nodes"))
            self.pack_module = pack_dir.replace(".", "_x_")  # the name ComfyUI registers the pack under
            self.pack_log = self.log_lines[self.pack_log_start:]
        finally:
            logging.getLogger().removeHandler(handler)
        self.models = workdir / "models"
        for name in MODEL_FOLDERS:
            path = self.models / name
            path.mkdir(parents=True, exist_ok=True)
            paths, exts = folder_paths.folder_names_and_paths[name]
            folder_paths.folder_names_and_paths[name] = ([str(path), *paths], exts)
        for kind in ("input", "output", "temp"):
            (workdir / kind).mkdir(exist_ok=True)
        folder_paths.set_input_directory(str(workdir / "input"))
        folder_paths.set_output_directory(str(workdir / "output"))
        folder_paths.set_temp_directory(str(workdir / "temp"))
        self.nodes = nodes
        self.server = FakeServer()
        from .tiny_nodes import register

        register(nodes)

    def module(self, name: str):
        """A module of the pack as ComfyUI loaded it, e.g. module("nodes.propdpm.model")."""
        return sys.modules[f"{self.pack_module}.{name}"]

    def node_class(self, node_id: str):
        return self.nodes.NODE_CLASS_MAPPINGS[node_id]

    def run(self, prompt: dict, outputs: list[str] | None = None, preview_method: str = "none"):
        """Execute `prompt` (API format) up to `outputs` (default: its output nodes); returns the executor."""
        import execution

        prompt_id = str(uuid.uuid4())
        if outputs is None:
            valid = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
            if not valid[0]:
                raise GraphError("?", "validation", f"{valid[1]} {valid[3]}")
            outputs = valid[2]
        else:
            for node_id in outputs:
                ok, errors, _ = asyncio.run(execution.validate_inputs(prompt_id, prompt, node_id, {}))
                if not ok:
                    raise GraphError(node_id, "validation", str(errors))
        executor = execution.PromptExecutor(self.server, cache_type=execution.CacheType.CLASSIC,
                                            cache_args={"lru": 0, "ram": 0})
        executor.execute(prompt, prompt_id, {"client_id": "test", "preview_method": preview_method}, outputs)
        if not executor.success:
            for event, data in executor.status_messages:
                if event == "execution_error":
                    raise GraphError(data["node_id"], data["exception_type"], data["exception_message"])
                if event == "execution_interrupted":
                    raise GraphError(data["node_id"], "interrupted", "execution interrupted")
            raise GraphError("?", "unknown", str(executor.status_messages))
        return executor

    @staticmethod
    def output(executor, node_id: str, slot: int = 0):
        return executor.caches.outputs.get(node_id).outputs[slot][0]


class _ListHandler(logging.Handler):
    def __init__(self, lines: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname}: {record.getMessage()}")
