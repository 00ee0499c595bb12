"""Model folders of the pack: models/magicprop (PropDPM .safetensors), models/depth_estimation (folders) and
models/optical_flow (RAFT weights, .safetensors or torchvision .pth)."""

from __future__ import annotations

import os

import folder_paths

PROPDPM_FOLDER = "magicprop"
DEPTH_FOLDER = "depth_estimation"
NO_DEPTH_MODEL = "none"
FLOW_FOLDER = "optical_flow"
NO_FLOW_WEIGHTS = "none"


def register_model_folders() -> None:
    """Add the pack's default folders, keeping any paths extra_model_paths.yaml already gave these names."""
    for name, extensions in ((PROPDPM_FOLDER, {".safetensors"}), (DEPTH_FOLDER, set()),
                             (FLOW_FOLDER, {".safetensors", ".pth", ".pt"})):
        default = os.path.join(folder_paths.models_dir, name)
        paths, _ = folder_paths.folder_names_and_paths.get(name, ([], set()))
        if default not in paths:
            paths.append(default)
        folder_paths.folder_names_and_paths[name] = (paths, extensions)


def propdpm_files() -> list[str]:
    return folder_paths.get_filename_list(PROPDPM_FOLDER)


def depth_model_folders() -> list[str]:
    """Sub-folders of models/depth_estimation that hold a transformers model (config.json)."""
    found = set()
    for base in folder_paths.get_folder_paths(DEPTH_FOLDER):
        if os.path.isdir(base):
            for entry in os.scandir(base):
                if entry.is_dir() and os.path.isfile(os.path.join(entry.path, "config.json")):
                    found.add(entry.name)
    return sorted(found)


def depth_model_path(name: str) -> str:
    for base in folder_paths.get_folder_paths(DEPTH_FOLDER):
        path = os.path.join(base, name)
        if os.path.isfile(os.path.join(path, "config.json")):
            return path
    raise FileNotFoundError(name)


def flow_weight_files() -> list[str]:
    return folder_paths.get_filename_list(FLOW_FOLDER)


def flow_weights_path(name: str) -> str | None:
    """Full path of a file in models/optical_flow, or None when there is no such file."""
    return folder_paths.get_full_path(FLOW_FOLDER, name)
