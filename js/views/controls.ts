/**
 * The control bar (layer slider, colormap, scale, sample, sort, Grad-CAM) and what its sort means
 * (`tileOrder`). Controls report user input through handlers and are told the model's state through
 * `update`, which never calls a handler back. Names are text: only `textContent` touches them.
 *
 * @example
 *   const controls = createControls(bar, { onLayer: (name) => show(name), ... });
 *   controls.update(stateFromModel());
 */
import { COLORMAPS, type ColormapName } from "../colormaps";
import { el, rangeInput } from "../dom";
import { formatPercent, formatShape, predictionLabel } from "../format";
import { type LayerMeta, type LayerScan, type Prediction, type SortKey, statOf } from "../protocol";
import type { Scope } from "../scale";

/** Everything the controls display, as read from the model's traits. */
export interface ControlState {
  layers: readonly LayerMeta[];
  layer: string;
  colormap: ColormapName;
  scale: Scope;
  symmetric: boolean;
  sample: number;
  numSamples: number;
  predictions: readonly (readonly Prediction[])[];
  sort: SortKey;
  topK: number;
  gradcam: boolean;
  /** Group label of each sample, or empty. */
  groups: readonly string[];
  /** Which dataset sorts the scan offers for the shown layer (each listed only when true, or selected). */
  scanSorts: ScanSorts;
}

/** The dataset sorts on offer: `dataset` (mean, max, active) when a scan covers the layer, the others with a class or a pair. */
export interface ScanSorts {
  dataset: boolean;
  selectivity: boolean;
  effect: boolean;
}

/**
 * What the user changed. `onLayer` is called at most once per animation frame while dragging;
 * `onPreview` on every slider movement, so the header can name the layer under the thumb at once.
 */
export interface ControlHandlers {
  onLayer(name: string): void;
  onPreview(name: string): void;
  onColormap(name: ColormapName): void;
  onScale(scope: Scope): void;
  onSymmetric(on: boolean): void;
  onSample(index: number): void;
  onSort(sort: SortKey): void;
  onTopK(k: number): void;
  onGradcam(open: boolean): void;
}

export interface Controls {
  readonly element: HTMLElement;
  update(state: ControlState): void;
  destroy(): void;
}

const COLORMAP_LABELS: Record<ColormapName, string> = {
  gray: "Gray",
  viridis: "Viridis",
  magma: "Magma",
  diverging: "Diverging",
};

const SCOPES: readonly [Scope, string][] = [
  ["channel", "Per channel"],
  ["layer", "Per layer"],
  ["global", "Global"],
];

const SORTS: readonly [SortKey, string][] = [
  ["index", "Channel index"],
  ["mean", "Mean activation"],
  ["max", "Max activation"],
  ["zeros", "Fraction of zeros"],
  ["gradcam", "Grad-CAM weight"],
  ["effect", "Group effect (|d|)"],
  ["dataset_mean", "Dataset mean"],
  ["dataset_max", "Dataset max"],
  ["dataset_active", "Dataset active"],
  ["selectivity", "Selectivity"],
  ["dataset_effect", "Dataset effect (|d|)"],
];

/** Which entry of {@link ScanSorts} offers a sort (null: always offered, or offered by groups). */
const SCAN_SORT: Partial<Record<SortKey, keyof ScanSorts>> = {
  dataset_mean: "dataset",
  dataset_max: "dataset",
  dataset_active: "dataset",
  selectivity: "selectivity",
  dataset_effect: "effect",
};

/**
 * The grid's tile order: channels sorted by a statistic (largest first, ties by index), cut to the
 * first `topK` (0 = all). Null means "every channel in index order", the grid's default. "effect" and
 * "dataset_effect" sort by |d| (a strong difference either way first); the dataset sorts read the
 * layer's scan arrays (channels without them sort last).
 *
 * @example
 *   tileOrder("mean", data.stats, data.channels, 8, null); // Int32Array of the 8 most active channels
 *   tileOrder("effect", data.stats, data.channels, 0, null, data.effect);
 *   tileOrder("selectivity", data.stats, data.channels, 0, null, null, data.scan);
 */
export function tileOrder(
  sort: SortKey,
  stats: Float32Array,
  channels: number,
  topK: number,
  gradcamWeights: Float32Array | null,
  effect: Float32Array | null = null,
  scan: LayerScan | null = null,
): Int32Array | null {
  const at = (a: Float32Array | null | undefined, c: number): number => (a != null && c < a.length ? a[c] : Number.NaN);
  const key = (c: number): number => {
    switch (sort) {
      case "mean":
        return statOf(stats, c, "mean");
      case "max":
        return statOf(stats, c, "max");
      case "zeros":
        return statOf(stats, c, "zeros");
      case "gradcam":
        return gradcamWeights !== null && c < gradcamWeights.length ? gradcamWeights[c] : 0;
      case "effect":
        return effect !== null && c < effect.length ? Math.abs(effect[c]) : 0;
      case "dataset_mean":
        return at(scan?.mean, c);
      case "dataset_max":
        return at(scan?.max, c);
      case "dataset_active":
        return at(scan?.active, c);
      case "selectivity":
        return at(scan?.selectivity, c);
      case "dataset_effect":
        return Math.abs(at(scan?.effect, c));
      case "index":
        return -c;
    }
  };
  const k = topK > 0 ? Math.min(topK, channels) : channels;
  if (sort === "index" && k === channels) return null;
  const order = Array.from({ length: channels }, (_, c) => c);
  const keys = order.map((c) => {
    const v = key(c);
    return Number.isNaN(v) ? -Infinity : v;
  });
  order.sort((a, b) => keys[b] - keys[a] || a - b);
  return Int32Array.from(order.slice(0, k));
}

function select<T extends string>(
  label: string,
  options: readonly [T, string][],
  onChange: (v: T) => void,
): HTMLSelectElement {
  const s = el("select", "fm-select");
  s.setAttribute("aria-label", label);
  s.title = label;
  for (const [value, text] of options) {
    const o = document.createElement("option");
    o.value = value;
    o.textContent = text;
    s.append(o);
  }
  s.addEventListener("change", () => onChange(s.value as T));
  return s;
}

function field(label: string, control: HTMLElement): HTMLLabelElement {
  const wrap = el("label", "fm-field");
  wrap.append(el("span", "fm-field-label", label), control);
  return wrap;
}

/**
 * Builds the control bar inside `container`.
 *
 * @example
 *   const controls = createControls(bar, handlers);
 *   controls.update({ layers, layer: "conv1", colormap: "gray", ... });
 */
/** The blocks a layer also is, for the slider's spoken value ("; also layer4"). */
function alsoText(aliases: readonly string[]): string {
  return aliases.length > 0 ? `; also ${aliases.join(", ")}` : "";
}

export function createControls(container: HTMLElement, handlers: ControlHandlers): Controls {
  const element = el("div", "fm-controls");
  let layers: readonly LayerMeta[] = [];
  let frame = 0;

  const layerRow = el("div", "fm-layer-row");
  const slider = rangeInput("Layer");
  // The layer's name, type and shape are in the header; the slider says only where it is.
  const position = el("output", "fm-layer-pos");
  position.title = "Position of the shown layer among the captured layers";
  layerRow.append(slider, position);

  const showPosition = (index: number): void => {
    const meta = layers[index];
    position.textContent = meta === undefined ? "" : `${index + 1} / ${layers.length}`;
    slider.setAttribute(
      "aria-valuetext",
      meta === undefined
        ? ""
        : `${meta.name} (${meta.type}, ${formatShape(meta.shape)}${alsoText(meta.aliases ?? [])})`,
    );
  };
  // Dragging fires `input` far more often than a layer can be fetched: the position and the header's
  // name follow every event, the layer change goes out once per frame with the latest position.
  const onSlide = (): void => {
    showPosition(slider.valueAsNumber);
    const under = layers[slider.valueAsNumber];
    if (under !== undefined) handlers.onPreview(under.name);
    if (frame !== 0) return;
    frame = requestAnimationFrame(() => {
      frame = 0;
      const meta = layers[slider.valueAsNumber];
      if (meta !== undefined) handlers.onLayer(meta.name);
    });
  };
  slider.addEventListener("input", onSlide);

  const colormap = select(
    "Colormap",
    COLORMAPS.map((c) => [c, COLORMAP_LABELS[c]] as [ColormapName, string]),
    handlers.onColormap,
  );
  const scale = select("Scale", SCOPES, handlers.onScale);
  const symmetric = el("input", "fm-checkbox");
  symmetric.type = "checkbox";
  symmetric.addEventListener("change", () => handlers.onSymmetric(symmetric.checked));
  const symmetricField = el("label", "fm-field fm-toggle");
  symmetricField.append(symmetric, el("span", "fm-field-label", "Symmetric ±"));
  symmetricField.title = "Centre the scale on zero";

  const sample = el("select", "fm-select");
  sample.setAttribute("aria-label", "Sample");
  sample.addEventListener("change", () => handlers.onSample(Number(sample.value)));
  const sampleField = field("Sample", sample);

  const sort = select("Sort tiles", SORTS, handlers.onSort);
  const optionOf = (key: SortKey): HTMLOptionElement =>
    [...sort.options].find((o) => o.value === key) as HTMLOptionElement;
  const effectOption = optionOf("effect");
  const scanOptions = Object.entries(SCAN_SORT).map(([key, need]) => ({
    key: key as SortKey,
    need: need as keyof ScanSorts,
    option: optionOf(key as SortKey),
  }));
  const gradcam = el("input", "fm-checkbox");
  gradcam.type = "checkbox";
  gradcam.setAttribute("aria-label", "Grad-CAM");
  gradcam.addEventListener("change", () => handlers.onGradcam(gradcam.checked));
  const gradcamField = el("label", "fm-field fm-toggle");
  gradcamField.append(gradcam, el("span", "fm-field-label", "Grad-CAM"));
  gradcamField.title = "Show where the model looks for a class, at the shown layer";
  const topK = el("input", "fm-number");
  topK.type = "number";
  topK.min = "0";
  topK.step = "1";
  topK.setAttribute("aria-label", "Show top k");
  topK.title = "Show only the first k tiles after sorting (0 = all)";
  topK.addEventListener("change", () => {
    const k = Math.max(0, Math.floor(topK.valueAsNumber || 0));
    topK.value = String(k);
    handlers.onTopK(k);
  });

  const options = el("div", "fm-options");
  options.append(
    field("Colormap", colormap),
    field("Scale", scale),
    symmetricField,
    sampleField,
    field("Sort", sort),
    field("Top k", topK),
    gradcamField,
  );
  element.append(layerRow, options);
  container.append(element);

  let sampleSignature = "";
  let layersRef: readonly LayerMeta[] | null = null;

  return {
    element,
    update(state: ControlState): void {
      if (state.layers !== layersRef) {
        layersRef = state.layers;
        layers = state.layers;
        slider.max = String(Math.max(0, layers.length - 1));
        slider.disabled = layers.length < 2;
      }
      const index = layers.findIndex((l) => l.name === state.layer);
      // While a drag is between frames, the slider is ahead of the model: leave it where the user is.
      if (frame === 0 && index >= 0 && slider.valueAsNumber !== index) slider.value = String(index);
      if (frame === 0) showPosition(index >= 0 ? index : slider.valueAsNumber);

      colormap.value = state.colormap;
      scale.value = state.scale;
      symmetric.checked = state.symmetric;
      // The group sort exists only for widgets with groups (it stays listed while selected, to show the truth).
      effectOption.hidden = effectOption.disabled = state.groups.length === 0 && state.sort !== "effect";
      // Likewise the dataset sorts: only when the scan covers the layer (with a class / a pair).
      for (const { key, need, option } of scanOptions) {
        option.hidden = option.disabled = !state.scanSorts[need] && state.sort !== key;
      }
      sort.value = state.sort;
      gradcam.checked = state.gradcam;
      if (document.activeElement !== topK) topK.value = String(state.topK);

      const signature = JSON.stringify([state.numSamples, state.predictions, state.groups]);
      if (signature !== sampleSignature) {
        sampleSignature = signature;
        sample.replaceChildren();
        for (let i = 0; i < state.numSamples; i++) {
          const o = document.createElement("option");
          o.value = String(i);
          const top = state.predictions[i]?.[0];
          const parts = [`#${i}`];
          if (top !== undefined) parts.push(`${predictionLabel(top)} ${formatPercent(top.prob)}`);
          const group = state.groups[i];
          if (group !== undefined) parts.push(`[${group}]`);
          o.textContent = parts.join(" · ");
          sample.append(o);
        }
      }
      sampleField.hidden = state.numSamples <= 1;
      sample.value = String(state.sample);
    },
    destroy(): void {
      cancelAnimationFrame(frame);
      frame = 0;
      element.remove();
    },
  };
}
