/**
 * The Grad-CAM panel: the input image with the class activation map of the shown layer laid over it
 * (bilinear upsampling, Turbo colours, an opacity slider), a class picker, a method picker (our Grad-CAM,
 * or pytorch-grad-cam's methods where the kernel has the package; a slow one says so, with its cost for the
 * shown layer) and a caption saying which method, resolution and class the map is for. The Grad-CAM panel (panels/gradcam.ts) gets the maps; this module draws.
 *
 * @example
 *   const panel = createGradcamPanel(root, { onTarget: (t) => store.set({ target: t }), onMethod: (m) => store.set({ cam_method: m }) });
 *   panel.setMethods(store.get("cam_methods"), store.get("cam_method"));
 *   panel.setClasses(predictions[sample], store.get("target"));
 *   panel.setInput({ height: 224, width: 224, pixels });
 *   panel.show(result);              // or panel.showLoading("layer4") / panel.showError("not a classifier")
 */
import { heatmapLUT } from "../colormaps";
import { el, rangeInput } from "../dom";
import { formatPercent, predictionLabel } from "../format";
import type { GradcamResult, InputPicture, Prediction } from "../protocol";
import { formatValue } from "../scale";

const METHOD_LABELS: Record<string, string> = {
  gradcam: "Grad-CAM (ours)",
  "gradcam++": "Grad-CAM++",
  xgradcam: "XGrad-CAM",
  layercam: "LayerCAM",
  scorecam: "Score-CAM",
  ablationcam: "Ablation-CAM",
  eigencam: "EigenCAM",
  eigengradcam: "Eigen-Grad-CAM",
  hirescam: "HiResCAM",
  "gradcam-elementwise": "Grad-CAM element-wise",
};

/**
 * Methods whose cost scales with the layer's channels, and how (python: `CHANNEL_COST` in
 * fmwidget/gradcam.py): Score-CAM and Ablation-CAM run the model once per channel.
 */
const CHANNEL_COST: Record<string, string> = {
  scorecam: "one forward per channel",
  ablationcam: "one forward per channel",
};

/**
 * A method's entry in the picker: its name, and for a method whose cost scales with channels, that it
 * is slow and how many forwards it takes for the shown layer (`channels`: the kernel computes the shown
 * sample's map only, and keeps it).
 *
 * @example
 *   camMethodOption("scorecam", 1280); // "Score-CAM (slow: one forward per channel — about 1,280 here)"
 *   camMethodOption("gradcam++", 1280); // "Grad-CAM++"
 */
export function camMethodOption(method: string, channels: number): string {
  const cost = CHANNEL_COST[method];
  const label = camMethodLabel(method);
  if (cost === undefined) return label;
  if (!(channels > 0)) return `${label} (slow: ${cost})`;
  return `${label} (slow: ${cost} — about ${channels.toLocaleString("en-US")} here)`;
}

/**
 * How a CAM method reads in the picker and captions (an unknown key reads as itself).
 *
 * @example
 *   camMethodLabel("gradcam++"); // "Grad-CAM++"
 */
export function camMethodLabel(method: string): string {
  return METHOD_LABELS[method] ?? method;
}

/**
 * Resizes a map with bilinear interpolation, pixel centres aligned as in PyTorch's
 * `F.interpolate(mode="bilinear", align_corners=False)`: each source value sits at its pixel's centre.
 *
 * @example
 *   upsampleBilinear(new Float32Array([0, 1]), 1, 2, 1, 4); // [0, 0.25, 0.75, 1]
 */
export function upsampleBilinear(src: Float32Array, h: number, w: number, H: number, W: number): Float32Array {
  const out = new Float32Array(H * W);
  // Source coordinate of each destination row / column, split into the lower index and the weight.
  const axis = (n: number, N: number): [Int32Array, Int32Array, Float32Array] => {
    const lo = new Int32Array(N);
    const hi = new Int32Array(N);
    const t = new Float32Array(N);
    for (let i = 0; i < N; i++) {
      const x = Math.min(n - 1, Math.max(0, ((i + 0.5) * n) / N - 0.5));
      lo[i] = Math.floor(x);
      hi[i] = Math.min(n - 1, lo[i] + 1);
      t[i] = x - lo[i];
    }
    return [lo, hi, t];
  };
  const [y0, y1, ty] = axis(h, H);
  const [x0, x1, tx] = axis(w, W);
  for (let r = 0; r < H; r++) {
    const a = y0[r] * w;
    const b = y1[r] * w;
    for (let c = 0; c < W; c++) {
      const top = src[a + x0[c]] * (1 - tx[c]) + src[a + x1[c]] * tx[c];
      const bottom = src[b + x0[c]] * (1 - tx[c]) + src[b + x1[c]] * tx[c];
      out[r * W + c] = top * (1 - ty[r]) + bottom * ty[r];
    }
  }
  return out;
}

/** Largest finite value of a heatmap (0 when there is none). */
function peak(heatmap: Float32Array): number {
  let m = 0;
  for (let i = 0; i < heatmap.length; i++) if (Number.isFinite(heatmap[i]) && heatmap[i] > m) m = heatmap[i];
  return m;
}

/**
 * The panel's picture: the heatmap scaled to its maximum (a `normalized` map is kept on [0, 1]),
 * upsampled to the input's size (or kept at its own size without an input) and blended over the input
 * with `opacity`.
 *
 * @example
 *   const image = heatmapPicture(result, input, 0.5); // ImageData of input.width × input.height
 */
export function heatmapPicture(result: GradcamResult, input: InputPicture | null, opacity: number): ImageData {
  const H = input?.height ?? result.height;
  const W = input?.width ?? result.width;
  const m = result.normalized ? 1 : peak(result.heatmap);
  const scaled = result.heatmap.map((v) => (m > 0 && Number.isFinite(v) ? v / m : 0));
  const heat = upsampleBilinear(scaled, result.height, result.width, H, W);
  const lut = heatmapLUT();
  const image = new ImageData(W, H);
  const a = input === null ? 1 : Math.min(1, Math.max(0, opacity));
  for (let i = 0; i < H * W; i++) {
    const j = 4 * Math.round(Math.min(1, Math.max(0, heat[i])) * 255);
    for (let k = 0; k < 3; k++) {
      const under = input === null ? 0 : input.pixels[3 * i + k];
      image.data[4 * i + k] = Math.round((1 - a) * under + a * lut[j + k]);
    }
    image.data[4 * i + 3] = 255;
  }
  return image;
}

export interface GradcamPanel {
  readonly element: HTMLElement;
  /**
   * The method picker's entries (hidden when there is only one) and the chosen one; `channels` (the shown
   * layer's) gives the slow methods' cost.
   */
  setMethods(methods: readonly string[], method: string, channels?: number): void;
  /** The class picker's entries: the sample's top predictions, "predicted" first; `target` is selected. */
  setClasses(predictions: readonly Prediction[], target: number | null): void;
  /** The picture under the heatmap; null with a reason when there is none (the heatmap is drawn alone). */
  setInput(input: InputPicture | null, note?: string): void;
  show(result: GradcamResult): void;
  /** Says a map is being computed; the previous one stays, dimmed. */
  showLoading(layer: string, method?: string): void;
  showError(text: string): void;
  /** Says the map was cancelled (not an error), with a button to compute it after all. */
  showCancelled(layer: string, method?: string): void;
  destroy(): void;
}

/**
 * Builds the Grad-CAM panel inside `container` (hide it with `panel.element.hidden`).
 *
 * @example
 *   const panel = createGradcamPanel(root, { onTarget: (t) => setTrait("target", t), onMethod: (m) => setTrait("cam_method", m) });
 */
export function createGradcamPanel(
  container: HTMLElement,
  handlers: { onTarget(target: number | null): void; onMethod(method: string): void; onRetry?(): void },
): GradcamPanel {
  const element = el("section", "fm-gradcam");
  element.setAttribute("aria-label", "Grad-CAM panel");
  element.hidden = true;

  const head = el("div", "fm-gradcam-head");
  const title = el("span", "fm-section-title", "Grad-CAM");
  const classes = el("select", "fm-select");
  classes.setAttribute("aria-label", "Class");
  classes.title = "The class whose evidence the heatmap shows";
  classes.addEventListener("change", () => handlers.onTarget(classes.value === "" ? null : Number(classes.value)));
  const opacity = rangeInput("Heatmap opacity", { step: 0.05, value: 0.5 });
  const classField = el("label", "fm-field");
  classField.append(el("span", "fm-field-label", "Class"), classes);
  const methods = el("select", "fm-select");
  methods.setAttribute("aria-label", "CAM method");
  methods.title = "How the map is computed: ours gives per-channel weights; the others come from pytorch-grad-cam";
  methods.addEventListener("change", () => handlers.onMethod(methods.value));
  const methodField = el("label", "fm-field");
  methodField.append(el("span", "fm-field-label", "Method"), methods);
  methodField.hidden = true;
  let methodSignature = "";
  const opacityField = el("label", "fm-field fm-gradcam-opacity");
  opacityField.append(el("span", "fm-field-label", "Opacity"), opacity);
  head.append(title, methodField, classField, opacityField);

  const body = el("div", "fm-gradcam-body");
  const picture = el("canvas", "fm-gradcam-picture");
  picture.setAttribute("aria-label", "Grad-CAM heatmap over the input");
  const side = el("div", "fm-gradcam-side");
  const caption = el("div", "fm-gradcam-caption");
  caption.setAttribute("role", "status");
  const legend = el("div", "fm-gradcam-legend");
  const strip = el("canvas", "fm-gradcam-strip");
  strip.width = 256;
  strip.height = 1;
  const stripImage = new ImageData(256, 1);
  stripImage.data.set(heatmapLUT());
  strip.getContext("2d")?.putImageData(stripImage, 0, 0);
  const legendLow = el("span", "fm-caption", "0");
  const legendHigh = el("span", "fm-caption", "max");
  legend.append(legendLow, strip, legendHigh);
  const note = el("div", "fm-caption");
  side.append(caption, legend, note);
  body.append(picture, side);
  const message = el("div", "fm-gradcam-message");
  const retry = el("button", "fm-button fm-gradcam-retry", "Compute again");
  retry.type = "button";
  retry.hidden = true;
  const onRetry = (): void => handlers.onRetry?.();
  retry.addEventListener("click", onRetry);
  element.append(head, message, retry, body);
  container.append(element);

  let result: GradcamResult | null = null;
  let input: InputPicture | null = null;
  let inputNote = "";

  function setMessage(text: string, isError: boolean): void {
    retry.hidden = true;
    message.textContent = text;
    message.hidden = text === "";
    message.classList.toggle("fm-error-text", isError);
    if (isError) message.setAttribute("role", "alert");
    else message.removeAttribute("role");
  }

  function draw(): void {
    if (result === null) return;
    const image = heatmapPicture(result, input, opacity.valueAsNumber);
    picture.width = image.width;
    picture.height = image.height;
    picture.getContext("2d")?.putImageData(image, 0, 0);
  }

  function describe(): void {
    if (result === null) return;
    const r = result;
    const cls =
      r.target === null ? "the predicted class" : r.label === null ? `class ${r.target}` : `${r.label} (${r.target})`;
    const size = `${r.height} × ${r.width} map`;
    const upsampled =
      input === null || (input.height === r.height && input.width === r.width)
        ? ""
        : `, upsampled to ${input.height} × ${input.width}`;
    caption.replaceChildren(
      el("div", "fm-gradcam-layer", r.layer),
      el(
        "div",
        "fm-gradcam-method",
        r.method === "gradcam" ? "method: Grad-CAM (ours)" : `method: ${camMethodLabel(r.method)} (pytorch-grad-cam)`,
      ),
      el(
        "div",
        "",
        r.normalized ? `${size} at input resolution, scaled to [0, 1] per image${upsampled}` : `${size}${upsampled}`,
      ),
      el("div", "", `class: ${cls}`),
    );
    const m = peak(r.heatmap);
    legendHigh.textContent = r.normalized ? "1" : formatValue(m);
    const notes: string[] = [];
    if (!(m > 0)) notes.push("Zero everywhere: no positive evidence for this class at this layer.");
    if (r.weights.length === 0)
      notes.push("No per-channel weights: tile badges and the Grad-CAM sort need Grad-CAM (ours).");
    if (inputNote !== "") notes.push(inputNote);
    note.textContent = notes.join(" ");
  }

  const redraw = (): void => draw();
  opacity.addEventListener("input", redraw);

  return {
    element,
    setMethods(list: readonly string[], method: string, channels = 0): void {
      const signature = JSON.stringify([list, channels]);
      if (signature !== methodSignature) {
        methodSignature = signature;
        methods.replaceChildren(
          ...list.map((m) => {
            const o = document.createElement("option");
            o.value = m;
            o.textContent = camMethodOption(m, channels);
            return o;
          }),
        );
      }
      methodField.hidden = list.length < 2;
      methods.value = method;
    },
    setClasses(predictions: readonly Prediction[], target: number | null): void {
      const entries: [string, string][] = [["", "predicted"]];
      for (const p of predictions) entries.push([String(p.index), `${predictionLabel(p)} (${formatPercent(p.prob)})`]);
      // A class set from Python outside the top 5 is still shown as chosen.
      if (target !== null && !predictions.some((p) => p.index === target))
        entries.push([String(target), `class ${target}`]);
      classes.replaceChildren(
        ...entries.map(([value, text]) => {
          const o = document.createElement("option");
          o.value = value;
          o.textContent = text;
          return o;
        }),
      );
      classes.value = target === null ? "" : String(target);
    },
    setInput(picture: InputPicture | null, text = ""): void {
      input = picture;
      inputNote = text;
      opacityField.hidden = picture === null;
      draw();
      describe();
    },
    show(r: GradcamResult): void {
      result = r;
      element.dataset.state = "ready";
      setMessage("", false);
      body.hidden = false;
      body.classList.remove("fm-stale");
      draw();
      describe();
    },
    showLoading(layer: string, method = "gradcam"): void {
      element.dataset.state = "loading";
      setMessage(`Computing ${method === "gradcam" ? "Grad-CAM" : camMethodLabel(method)} for ${layer}…`, false);
      // The previous map stays, dimmed, while the next layer's is computed (scrubbing stays calm).
      body.classList.add("fm-stale");
      body.hidden = result === null;
    },
    showError(text: string): void {
      element.dataset.state = "error";
      result = null;
      body.hidden = true;
      setMessage(text, true);
    },
    showCancelled(layer: string, method = "gradcam"): void {
      element.dataset.state = "cancelled";
      setMessage(`${method === "gradcam" ? "Grad-CAM" : camMethodLabel(method)} for ${layer}: cancelled.`, false);
      retry.hidden = handlers.onRetry === undefined;
      // The last map shown stays, dimmed: it is not this layer's.
      body.classList.add("fm-stale");
      body.hidden = result === null;
    },
    destroy(): void {
      opacity.removeEventListener("input", redraw);
      retry.removeEventListener("click", onRetry);
      element.remove();
    },
  };
}
