"""The typed run config: wrong types and unknown keys are one line naming the key, the value, the type and the fix."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from magicprop.errors import MagicPropError
from magicprop.propdpm.config import DepthSpec, GapDistribution, PropDPMConfig
from magicprop.train.config import RunConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
TRAIN_CONFIGS = ROOT / "magicprop" / "configs" / "train"


def error_of(overrides: list[str], path: Path | None = None) -> str:
    with pytest.raises(MagicPropError) as e:
        load_config(path, overrides)
    message = str(e.value)
    assert "\n" not in message, "one line"
    return message


@pytest.mark.parametrize("override, expected, fix", [
    ("train.batch_size=16.0", "an integer", "train.batch_size=16"),
    ('train.steps="2000"', "an integer", "train.steps=2000"),
    ("train.previous_frame=1", "true or false", "train.previous_frame=true"),
    ('train.learning_rate="fast"', "a number", "train.learning_rate=0.0001"),
    ("train.ema_decay=true", "a number or null", "train.ema_decay=null"),
    ("data.gaps=[1, 2.5]", "an array of integers", "data.gaps=[1, 2, 3, 4]"),
    ("model.unet_config=[32, 64]", "a table or a string or null", "model.unet_config=null"),
    ("train.output_dir=3", "a string", 'train.output_dir="3"'),
])
def test_wrong_types_name_the_key_value_type_and_fix(override, expected, fix):
    key, value = override.split("=", 1)
    message = error_of([override])
    assert message.startswith(f"config {key} = {value} ("), message
    assert f"expected {expected}" in message and f"write e.g. {fix} " in message, message


def test_unknown_keys_and_sections_suggest_the_known_one():
    message = error_of(["train.batchsize=16"])
    assert "train.batchsize is unknown" in message and "did you mean train.batch_size?" in message
    assert "known keys in [train]:" in message and "learning_rate" in message
    assert "did you mean train?" in error_of(["trian.steps=3"])
    assert "expected section.key=value" in error_of(["steps=3"])


def test_toml_values_are_checked_like_overrides(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[train]\nsteps = 100\nwarmup_steps = 1.5\n')
    message = error_of([], bad)
    assert message.startswith("config train.warmup_steps = 1.5 (float): expected an integer"), message
    table = tmp_path / "table.toml"
    table.write_text("train = 5\n")
    assert "config [train] = 5: expected a table" in error_of([], table)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[data]\nshard = \"x\"\n")
    assert "data.shard is unknown: did you mean data.shards?" in error_of([], unknown)


def test_right_types_load_and_ints_widen_to_floats():
    cfg = load_config(None, ["train.learning_rate=1", "train.ema_decay=null", "data.gap_weights=[1, 3]",
                             "data.gaps=[1, 2]", 'model.unet_config={"in_channels": 4}', "train.batch_size=8",
                             "train.output_dir=runs/x"])
    assert cfg.train.learning_rate == 1.0 and isinstance(cfg.train.learning_rate, float)
    assert cfg.data.gap_weights == [1.0, 3.0] and all(isinstance(w, float) for w in cfg.data.gap_weights)
    assert cfg.data.gaps == [1, 2] and cfg.train.ema_decay is None and cfg.train.batch_size == 8
    assert cfg.model.unet_config == {"in_channels": 4} and cfg.train.output_dir == "runs/x"


@pytest.mark.parametrize("recipe", sorted(p.name for p in TRAIN_CONFIGS.glob("*.toml")))
def test_shipped_recipes_are_well_typed(recipe):
    cfg = load_config(TRAIN_CONFIGS / recipe)
    assert isinstance(cfg, RunConfig) and cfg.train.steps > 0


def test_recorded_settings_default_to_the_checkpoint_formats():
    """One source of defaults: what a checkpoint records defaults to the checkpoint format's own values."""
    run = RunConfig()
    gap = GapDistribution()
    assert (tuple(run.data.gaps), tuple(run.data.gap_weights), run.data.backward) == (gap.gaps, gap.weights,
                                                                                      gap.backward)
    meta = {f.name: f.default for f in fields(PropDPMConfig)}
    for name in ("appearance_dropout", "prev_noise_augmentation", "previous_frame"):
        assert getattr(run.train, name) == meta[name], name
    assert run.data.depth_model == DepthSpec().model


def test_cli_exits_2_with_one_line_naming_the_key(tmp_path):
    """`python -m magicprop train --config C --set train.batch_size=16.0` refuses before any work."""
    config = tmp_path / "run.toml"
    config.write_text(f'[data]\nsource = "synthetic"\n\n[train]\noutput_dir = "{(tmp_path / "run").as_posix()}"\n')
    out = subprocess.run([sys.executable, "-m", "magicprop", "train", "--config", str(config), "--set",
                          "train.batch_size=16.0"], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 2, out.stderr[-3000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("magicprop train: error: config train.batch_size = 16.0"), lines
    assert "expected an integer" in lines[0] and "train.batch_size=16" in lines[0]
    assert not (tmp_path / "run").exists(), "nothing is written"


@pytest.mark.parametrize("override, expected", [
    ("train.batch_size=0", "config train.batch_size = 0: expected an integer >= 1"),
    ('train.lr_schedule="cosin"', "did you mean 'cosine'?"),
    ("data.gaps=[1, 2]", "expected one weight per gap"),
    ("data.gap_weights=[0, 0, 0, 0]", "config data.gap_weights = [0.0, 0.0, 0.0, 0.0]: expected weights >= 0"),
    ("train.log_every=0", "config train.log_every = 0: expected an integer >= 1"),
    ("train.checkpoint_every=0", "config train.checkpoint_every = 0: expected an integer >= 1"),
    ("train.validation_steps=0", "config train.validation_steps = 0: expected an integer >= 1"),
    ("data.backward=1.5", "config data.backward = 1.5: expected a probability in [0, 1]"),
    ("train.appearance_dropout=1.5", "config train.appearance_dropout = 1.5: expected a probability"),
])
def test_bad_values_are_refused_as_the_config_loads(override, expected):
    message = error_of([override])
    assert expected in message, message


def test_model_inputs_are_checked_before_loading(tmp_path, tiny_models):
    """A VAE folder that holds CLIP, a CLIP folder that holds a VAE, a missing unet_config: one line each."""
    from magicprop.train.config import check_inputs

    good = [f"model.vae={tiny_models['vae']}", f"model.clip_vision={tiny_models['clip_vision']}"]
    check_inputs(load_config(None, good))
    for override, expected in (
        (f"model.vae={tiny_models['clip_vision']}", "holds CLIPVisionModelWithProjection (its config.json): expected "
                                                    "a diffusers AutoencoderKL"),
        (f"model.clip_vision={tiny_models['vae']}", "holds AutoencoderKL (its config.json): expected a transformers "
                                                    "CLIPVisionModelWithProjection"),
        (f"model.unet_config={tmp_path / 'nope.json'}", "is not a readable JSON file (FileNotFoundError)"),
    ):
        with pytest.raises(MagicPropError) as e:
            check_inputs(load_config(None, good + [override]))
        assert expected in str(e.value) and override.split("=")[0] in str(e.value), str(e.value)
