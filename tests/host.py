"""The in-process ComfyUI host (moved to `harness/`, shared with the benchmarks); re-exported for the tests."""

from harness.host import FakeServer, GraphError, Host, enter_comfyui, find_comfyui, progress_hook  # noqa: F401
