"""Model folders of the pack: models/magicprop (PropDPM .safetensors) and models/depth_estimation (folders)."""

from __future__ import annotations

import os

import folder_paths

PROPDPM_FOLDER = "magicprop"
DEPTH_FOLDER = "depth_estimation"
NO_DEPTH_MODEL = "none"


def register_model_folders() -> None:
    """Add the pack's default folders, keeping any paths extra_model_paths.yaml already gave these names."""
    for name, extensions in ((PROPDPM_FOLDER, {".safetensors"}), (DEPTH_FOLDER, set())):
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
