// MagicProp: a live filmstrip on the AutoregressivePropagate and FlowRefine nodes.
// The node sends "magicprop.start" when a run begins and "magicprop.frame" with a small JPEG (a latent-to-RGB
// preview, no VAE decode, or a thumbnail of the refined frame) each time a frame is finished; the strip shows the
// frames in clip order, the reference outlined, and stays after the run until the next one starts.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const NODE_TYPES = new Set(["AutoregressivePropagate", "FlowRefine"]);
const STRIP_CLASS = "magicprop-filmstrip";

function makeStrip(node) {
  const el = document.createElement("div");
  el.className = STRIP_CLASS;
  el.style.cssText =
    "display:flex;flex-wrap:wrap;gap:2px;align-content:flex-start;overflow-y:auto;" +
    "min-height:24px;max-height:180px;padding:2px;box-sizing:border-box;";
  const status = document.createElement("div");
  status.className = "magicprop-filmstrip-status";
  status.style.cssText = "width:100%;font-size:10px;opacity:0.7;";
  status.textContent = "frames appear here while the node runs";
  el.appendChild(status);
  node.magicpropStrip = { el, status, count: 0, total: 0 };
  node.addDOMWidget("filmstrip", "magicprop_filmstrip", el, { serialize: false, hideOnZoom: false });
}

function stripOf(nodeId) {
  const node = app.graph?.getNodeById?.(Number(nodeId)) ?? app.graph?.getNodeById?.(nodeId);
  return node?.magicpropStrip ?? null;
}

function reset(strip, total) {
  for (const img of strip.el.querySelectorAll("img")) img.remove();
  strip.count = 0;
  strip.total = total;
  strip.status.textContent = `0 / ${total} frames`;
}

function addFrame(strip, detail) {
  const img = document.createElement("img");
  img.src = `data:image/jpeg;base64,${detail.image}`;
  img.dataset.index = String(detail.index);
  img.title = detail.index === detail.reference ? `frame ${detail.index} (reference)` : `frame ${detail.index}`;
  img.style.cssText = "height:40px;image-rendering:auto;border:2px solid transparent;border-radius:2px;";
  if (detail.index === detail.reference) {
    img.classList.add("magicprop-reference");
    img.style.borderColor = "#f5b400";
  }
  // keep clip order: insert before the first thumbnail with a larger index
  const after = [...strip.el.querySelectorAll("img")].find((other) => Number(other.dataset.index) > detail.index);
  strip.el.insertBefore(img, after ?? null);
  strip.count += 1;
  strip.status.textContent = `${strip.count} / ${strip.total} frames`;
}

app.registerExtension({
  name: "magicprop.filmstrip",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!NODE_TYPES.has(nodeData?.name)) return;
    const created = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = created?.apply(this, arguments);
      makeStrip(this);
      return result;
    };
  },
  async setup() {
    api.addEventListener("magicprop.start", ({ detail }) => {
      const strip = stripOf(detail.node);
      if (strip) reset(strip, detail.total);
    });
    api.addEventListener("magicprop.frame", ({ detail }) => {
      const strip = stripOf(detail.node);
      if (strip) addFrame(strip, detail);
    });
  },
});
