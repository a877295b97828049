/**
 * The channel view ("drill-down"): one feature map at full resolution with its exact float32 values, a
 * histogram, statistics, the filter that produced it, the map laid over the input image, how the pointed
 * value is computed with its receptive field boxed on the input (views/explain.ts) and, with a dataset
 * scan of the layer, its top dataset examples (views/examples.ts).
 *
 * @example
 *   const detail = createDetail(panel, context);
 *   detail.show(5);        // request channel 5 of the current layer and open
 *   detail.show(null);     // close
 */
import { type ColormapName, colormapLUT, NAN_COLOR } from "../colormaps";
import { el, rangeInput } from "../dom";
import { rgbaImage } from "../pictures";
import {
  type ChannelData,
  type ConvFilter,
  type Explanation,
  FLAG_CONSTANT,
  FLAG_DATASET_DEAD,
  FLAG_DEAD,
  type InputPicture,
  isDropped,
  type LayerMeta,
  type ScanInfo,
} from "../protocol";
import { displayRange, formatValue, type Scope, toUnit } from "../scale";
import type { DataSource } from "../source";
import { type ThemeColors, themeColors } from "../theme";
import { createExamples } from "./examples";
import { createExplain } from "./explain";

/** What the channel view reads from the widget (always the current state). */
export interface DetailContext {
  source: Pick<DataSource, "channel" | "input" | "examples" | "useExample" | "explain" | "live">;
  /** The `scan_info` trait (the top-examples section shows for the layers it lists). */
  scan(): ScanInfo | null;
  revision(): number;
  sample(): number;
  layer(): LayerMeta | undefined;
  colormap(): ColormapName;
  scope(): Scope;
  symmetric(): boolean;
  globalRange(): [number, number];
  /** Channel flags of the shown layer (bit 1 dead, 2 constant, 4 non-finite, 8 dead across the dataset), when loaded. */
  flags(channel: number, layer: string): number | undefined;
  /** The user moved to another channel (prev/next) or closed the view (null). */
  onNavigate(channel: number | null): void;
}

export interface Detail {
  readonly element: HTMLElement;
  /** The channel shown, or null when closed. */
  readonly channel: number | null;
  /** Opens (or switches to) a channel of the current layer, or closes with null. Refetches when the layer, sample or revision changed. */
  show(channel: number | null): void;
  /** Redraws with the current colormap, scale and theme (no refetch). */
  redraw(): void;
  /** Handles ←, → and Esc; returns whether the key was used. */
  handleKey(ev: KeyboardEvent): boolean;
  destroy(): void;
}

/** Statistics of one channel over its exact values. */
export interface ChannelStats {
  min: number;
  max: number;
  mean: number;
  std: number;
  zeros: number;
  nan: number;
  inf: number;
}

/**
 * Min, max, mean and standard deviation over the finite values; `zeros` is the fraction of exact zeros.
 * With no finite value, min = max = 0 (as the kernel reports).
 *
 * @example
 *   channelStats(new Float32Array([0, 1, NaN])); // {min: 0, max: 1, mean: 0.5, std: 0.5, zeros: 1/3, nan: 1, inf: 0}
 */
export function channelStats(values: Float32Array): ChannelStats {
  let min = Infinity;
  let max = -Infinity;
  let sum = 0;
  let sumSq = 0;
  let finite = 0;
  let zeros = 0;
  let nan = 0;
  let inf = 0;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (Number.isNaN(v)) nan++;
    else if (!Number.isFinite(v)) inf++;
    else {
      if (v < min) min = v;
      if (v > max) max = v;
      if (v === 0) zeros++;
      sum += v;
      sumSq += v * v;
      finite++;
    }
  }
  const mean = finite > 0 ? sum / finite : 0;
  const variance = finite > 0 ? Math.max(0, sumSq / finite - mean * mean) : 0;
  return {
    min: finite > 0 ? min : 0,
    max: finite > 0 ? max : 0,
    mean,
    std: Math.sqrt(variance),
    zeros: values.length > 0 ? zeros / values.length : 0,
    nan,
    inf,
  };
}

/**
 * The shortest decimal that reads back as the same float32: the value as the kernel holds it.
 *
 * @example
 *   exactValue(Math.fround(0.1)); // "0.1"
 */
export function exactValue(v: number): string {
  if (!Number.isFinite(v)) return formatValue(v);
  for (let p = 1; p < 9; p++) {
    const s = v.toPrecision(p);
    if (Math.fround(Number(s)) === v) return String(Number(s));
  }
  return String(Number(v.toPrecision(9)));
}

/**
 * Counts of finite values in `bins` equal bins over [min, max] (a constant map puts everything in one).
 *
 * @example
 *   histogram(new Float32Array([0, 0, 1]), 2, 0, 1); // Uint32Array [2, 1]
 */
export function histogram(values: Float32Array, bins: number, min: number, max: number): Uint32Array {
  const counts = new Uint32Array(bins);
  const span = max - min;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (!Number.isFinite(v)) continue;
    const b = span > 0 ? Math.min(bins - 1, Math.floor(((v - min) / span) * bins)) : 0;
    counts[b]++;
  }
  return counts;
}

/** Paints values into RGBA pixels through a colormap over [lo, hi]; NaN gets NAN_COLOR. */
function paint(values: Float32Array, lut: Uint8Array, lo: number, hi: number, out: Uint8ClampedArray): void {
  for (let i = 0; i < values.length; i++) {
    const t = toUnit(values[i], lo, hi);
    const o = 4 * i;
    if (Number.isNaN(t)) {
      out[o] = NAN_COLOR[0];
      out[o + 1] = NAN_COLOR[1];
      out[o + 2] = NAN_COLOR[2];
      out[o + 3] = NAN_COLOR[3];
    } else {
      const j = 4 * Math.round(t * 255);
      out[o] = lut[j];
      out[o + 1] = lut[j + 1];
      out[o + 2] = lut[j + 2];
      out[o + 3] = 255;
    }
  }
}

function button(text: string, label: string, onClick: () => void): HTMLButtonElement {
  const b = el("button", "fm-button", text);
  b.type = "button";
  b.setAttribute("aria-label", label);
  b.title = label;
  b.addEventListener("click", onClick);
  return b;
}

/** The channel shown: its exact map (a decoded `channel` reply), the key it was asked for and its statistics. */
interface Loaded extends ChannelData {
  key: string;
  stats: ChannelStats;
}

interface InputImage extends InputPicture {
  key: string;
}

const HIST_BINS = 64;
/** The channel map's largest height on screen (CSS px); the style sheet's max-height says the same. */
const MAP_MAX_HEIGHT = 420;

/** The log-count histogram of a channel's finite values, with its range (and zero) marked. */
function drawHistogram(
  histCanvas: HTMLCanvasElement,
  histCaption: HTMLElement,
  loaded: Loaded,
  colors: ThemeColors,
): void {
  const dpr = window.devicePixelRatio || 1;
  const cssW = Math.max(160, histCanvas.clientWidth || 240);
  const cssH = 72;
  histCanvas.width = Math.round(cssW * dpr);
  histCanvas.height = Math.round(cssH * dpr);
  const g = histCanvas.getContext("2d");
  if (g === null) return;
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, cssW, cssH);
  const { min, max } = loaded.stats;
  const counts = histogram(loaded.values, HIST_BINS, min, max);
  // Log heights: a ReLU map's spike at zero would otherwise flatten every other bin.
  const most = Math.max(1, ...counts);
  const top = Math.log1p(most);
  const plotH = cssH - 14;
  g.font = "10px system-ui, sans-serif";
  // The count axis on the left: the tallest bin's count at the top and 1 where a single value reaches.
  const ticks = countTicks(most);
  const axisW = Math.ceil(Math.max(...ticks.map((t) => g.measureText(t.label).width))) + 6;
  const plotW = cssW - axisW;
  const barW = plotW / HIST_BINS;
  g.fillStyle = colors.accent;
  counts.forEach((c, i) => {
    const h = (Math.log1p(c) / top) * plotH;
    g.fillRect(axisW + i * barW, plotH - h, Math.max(1, barW - 0.5), h);
  });
  g.fillStyle = colors.muted;
  g.strokeStyle = colors.muted;
  g.lineWidth = 1;
  g.textAlign = "right";
  g.textBaseline = "middle";
  for (const t of ticks) {
    const y = Math.min(plotH - 4, Math.max(5, plotH - (Math.log1p(t.count) / top) * plotH));
    g.fillText(t.label, axisW - 4, y);
    g.beginPath();
    g.moveTo(axisW - 3, Math.round(plotH - (Math.log1p(t.count) / top) * plotH) + 0.5);
    g.lineTo(axisW, Math.round(plotH - (Math.log1p(t.count) / top) * plotH) + 0.5);
    g.stroke();
  }
  g.beginPath();
  g.moveTo(axisW + 0.5, 0);
  g.lineTo(axisW + 0.5, plotH);
  g.stroke();
  g.textBaseline = "bottom";
  g.textAlign = "left";
  g.fillText(formatValue(min), axisW, cssH);
  g.textAlign = "right";
  g.fillText(formatValue(max), cssW, cssH);
  if (min < 0 && max > 0) {
    const x = axisW + ((0 - min) / (max - min)) * plotW;
    g.strokeStyle = colors.fg;
    g.setLineDash([3, 2]);
    g.beginPath();
    g.moveTo(x + 0.5, 0);
    g.lineTo(x + 0.5, plotH);
    g.stroke();
    g.setLineDash([]);
    // The zero label only where it does not collide with the min/max labels at the ends.
    if (x > axisW + 36 && x < cssW - 36) {
      g.textAlign = "center";
      g.fillText("0", x, cssH);
    }
  }
  histCaption.textContent = `${loaded.values.length} values in ${HIST_BINS} bins (values per bin, log scale)`;
}

/**
 * The labelled counts of the histogram's log axis: the tallest bin's count and 1 (just the one when the
 * tallest bin holds one value).
 *
 * @example
 *   countTicks(3136); // [{ count: 3136, label: "3.1k" }, { count: 1, label: "1" }]
 */
export function countTicks(most: number): { count: number; label: string }[] {
  const label = (n: number): string =>
    n >= 1e6
      ? `${(n / 1e6).toPrecision(2)}M`
      : n >= 1e4
        ? `${Math.round(n / 1e3)}k`
        : n >= 1e3
          ? `${(n / 1e3).toPrecision(2)}k`
          : String(n);
  return most > 1
    ? [
        { count: most, label: label(most) },
        { count: 1, label: "1" },
      ]
    : [{ count: 1, label: "1" }];
}

/** Puts `marker` over data pixel (row, col) of a `rows × cols` picture drawn by `canvas` (same offset parent). */
function placeMarker(
  marker: HTMLElement,
  canvas: HTMLElement,
  row: number,
  col: number,
  rows: number,
  cols: number,
): void {
  const pw = canvas.clientWidth / cols;
  const ph = canvas.clientHeight / rows;
  // At least 7 px across, centred on the pixel, so a marker on a pixel of a large map stays visible.
  const w = Math.max(7, pw);
  const h = Math.max(7, ph);
  marker.style.left = `${canvas.offsetLeft + (col + 0.5) * pw - w / 2}px`;
  marker.style.top = `${canvas.offsetTop + (row + 0.5) * ph - h / 2}px`;
  marker.style.width = `${w}px`;
  marker.style.height = `${h}px`;
  marker.hidden = false;
}

/**
 * Puts `box` over the input pixels [top, bottom) × [left, right) of an `inputH × inputW` tensor drawn by
 * `canvas` (the picture may have another size than the tensor: the box scales with it).
 */
function placeBox(
  box: HTMLElement,
  canvas: HTMLElement,
  [top, left, bottom, right]: [number, number, number, number],
  [inputH, inputW]: [number, number],
): void {
  const sx = canvas.clientWidth / inputW;
  const sy = canvas.clientHeight / inputH;
  box.style.left = `${canvas.offsetLeft + left * sx}px`;
  box.style.top = `${canvas.offsetTop + top * sy}px`;
  box.style.width = `${Math.max(2, (right - left) * sx)}px`;
  box.style.height = `${Math.max(2, (bottom - top) * sy)}px`;
  box.dataset.box = `${top},${left},${bottom},${right}`;
  box.hidden = false;
}

/** The statistics list: exact min/max, mean, std, zeros, size, non-finite counts and batch health. */
function drawStats(stats: HTMLElement, loaded: Loaded, flags: number): void {
  const s = loaded.stats;
  const rows: [string, string][] = [
    ["min", exactValue(s.min)],
    ["max", exactValue(s.max)],
    ["mean", formatValue(s.mean)],
    ["std", formatValue(s.std)],
    ["zeros", `${(s.zeros * 100).toFixed(1)}%`],
    ["size", `${loaded.height} × ${loaded.width}`],
  ];
  if (s.nan > 0) rows.push(["NaN", String(s.nan)]);
  if (s.inf > 0) rows.push(["±Inf", String(s.inf)]);
  if (flags & FLAG_DATASET_DEAD) rows.push(["health", "dead across the dataset: never > 0 on any scanned image"]);
  else if (flags & FLAG_DEAD) rows.push(["health", "dead: zero for every input"]);
  else if (flags & FLAG_CONSTANT) rows.push(["health", "constant for every input"]);
  stats.replaceChildren();
  for (const [k, v] of rows) stats.append(el("dt", "", k), el("dd", "", v));
}

/** The conv kernel behind the channel: an RGB picture for the first conv, else one tile per input channel. */
function drawFilter(
  filterBox: HTMLElement,
  filterCanvas: HTMLCanvasElement,
  filterCaption: HTMLElement,
  f: ConvFilter | null,
): void {
  filterBox.hidden = f === null;
  if (f === null) return;
  let m = 0;
  for (let i = 0; i < f.data.length; i++) if (Number.isFinite(f.data[i])) m = Math.max(m, Math.abs(f.data[i]));
  const g = filterCanvas.getContext("2d");
  if (g === null) return;
  if (f.rgb && f.cin === 3) {
    // The first conv's kernel as a picture: 0.5 grey is a zero weight, each channel scaled by max |w|.
    const image = new ImageData(f.kw, f.kh);
    for (let y = 0; y < f.kh; y++) {
      for (let x = 0; x < f.kw; x++) {
        for (let c = 0; c < 3; c++) {
          const w = f.data[(c * f.kh + y) * f.kw + x];
          image.data[4 * (y * f.kw + x) + c] = Math.round(255 * (0.5 + (m > 0 ? w / (2 * m) : 0)));
        }
        image.data[4 * (y * f.kw + x) + 3] = 255;
      }
    }
    filterCanvas.width = f.kw;
    filterCanvas.height = f.kh;
    g.putImageData(image, 0, 0);
    filterCanvas.style.width = `${Math.min(160, f.kw * 24)}px`;
    filterCaption.textContent = `${f.kh} × ${f.kw} RGB kernel (grey = 0, max |w| = ${formatValue(m)})`;
    return;
  }
  // One small tile of kh × kw weights per input channel, 1 px apart, on a diverging map centred on 0.
  const cols = Math.ceil(Math.sqrt(f.cin));
  const rowsN = Math.ceil(f.cin / cols);
  const tileW = f.kw + 1;
  const tileH = f.kh + 1;
  filterCanvas.width = cols * tileW - 1;
  filterCanvas.height = rowsN * tileH - 1;
  const image = new ImageData(filterCanvas.width, filterCanvas.height);
  const lut = colormapLUT("diverging");
  const lo = m > 0 ? -m : -1;
  const hi = m > 0 ? m : 1;
  for (let c = 0; c < f.cin; c++) {
    const ox = (c % cols) * tileW;
    const oy = Math.floor(c / cols) * tileH;
    for (let y = 0; y < f.kh; y++) {
      for (let x = 0; x < f.kw; x++) {
        const t = toUnit(f.data[(c * f.kh + y) * f.kw + x], lo, hi);
        const o = 4 * ((oy + y) * image.width + ox + x);
        const j = 4 * Math.round((Number.isNaN(t) ? 0.5 : t) * 255);
        image.data[o] = lut[j];
        image.data[o + 1] = lut[j + 1];
        image.data[o + 2] = lut[j + 2];
        image.data[o + 3] = 255;
      }
    }
  }
  g.putImageData(image, 0, 0);
  filterCanvas.style.width = `${Math.min(280, filterCanvas.width * Math.max(1, Math.floor(280 / filterCanvas.width)))}px`;
  filterCaption.textContent = `${f.cin} input channel${f.cin === 1 ? "" : "s"} × ${f.kh} × ${f.kw} weights (blue < 0 < red, max |w| = ${formatValue(m)})`;
}

/** The channel map (as drawn on `map`) over the input picture, nearest-neighbour, at `opacity`. */
function drawOnInput(
  overlayBox: HTMLElement,
  overlay: HTMLCanvasElement,
  map: HTMLCanvasElement,
  loaded: Loaded | null,
  input: InputPicture | null,
  opacity: number,
): void {
  const g = overlay.getContext("2d");
  if (g === null || loaded === null || input === null) {
    overlayBox.classList.toggle("fm-empty", input === null);
    return;
  }
  overlayBox.classList.remove("fm-empty");
  overlay.width = input.width;
  overlay.height = input.height;
  g.putImageData(rgbaImage(input), 0, 0);
  g.globalAlpha = opacity;
  // Nearest-neighbour like the map itself: each activation covers the input patch it stands for.
  g.imageSmoothingEnabled = false;
  g.drawImage(map, 0, 0, input.width, input.height);
  g.globalAlpha = 1;
}

/**
 * Builds the channel view inside `container` (hidden until a channel is shown).
 *
 * @example
 *   const detail = createDetail(root, { source, revision: () => store.get("revision"), ... });
 */
export function createDetail(container: HTMLElement, ctx: DetailContext): Detail {
  const element = el("section", "fm-detail");
  element.setAttribute("aria-label", "Channel detail");
  element.hidden = true;

  const head = el("div", "fm-detail-head");
  const title = el("span", "fm-detail-title");
  const prev = button("‹", "Previous channel", () => step(-1));
  const next = button("›", "Next channel", () => step(1));
  const close = button("×", "Close channel view", () => ctx.onNavigate(null));
  const nav = el("span", "fm-detail-nav");
  nav.append(prev, next, close);
  head.append(title, nav);

  const message = el("div", "fm-detail-message");
  message.setAttribute("role", "status");
  // A saved file's maps are decoded from its 8-bit data: say so wherever values are read.
  const approx = el("div", "fm-caption fm-detail-approx");
  approx.hidden = true;

  const mapBox = el("div", "fm-detail-map");
  const map = el("canvas", "fm-pixelated");
  map.setAttribute("aria-label", "Channel map");
  const value = el("output", "fm-value");
  value.setAttribute("aria-label", "Value");
  value.textContent = "Point at the map to read a value";
  // The pointed pixel, ringed on the map and on the input (a DOM box: the canvases stay pure pictures).
  const mapMarker = el("div", "fm-pixel-marker");
  mapMarker.hidden = true;
  mapBox.append(map, mapMarker, value);

  const side = el("div", "fm-detail-side");
  const histCanvas = el("canvas", "fm-hist");
  histCanvas.setAttribute("aria-label", "Histogram of values");
  const histCaption = el("div", "fm-caption");
  const stats = el("dl", "fm-stats");
  const filterBox = el("div", "fm-detail-filter");
  const filterCanvas = el("canvas", "fm-pixelated");
  filterCanvas.setAttribute("aria-label", "Filter weights");
  const filterCaption = el("div", "fm-caption");
  filterBox.append(el("div", "fm-section-title", "Filter"), filterCanvas, filterCaption);
  const overlayBox = el("div", "fm-detail-overlay");
  const overlay = el("canvas", "fm-overlay");
  overlay.setAttribute("aria-label", "Map over the input image");
  const opacity = rangeInput("Overlay opacity", { step: 0.05, value: 0.6 });
  const overlayCaption = el("div", "fm-caption");
  const opacityField = el("label", "fm-field");
  opacityField.append(el("span", "fm-field-label", "Opacity"), opacity);
  const inputMarker = el("div", "fm-pixel-marker");
  inputMarker.hidden = true;
  // The receptive field of the explained pixel: the input pixels that can change its value.
  const fieldBox = el("div", "fm-field-box");
  fieldBox.setAttribute("aria-label", "Receptive field");
  fieldBox.hidden = true;
  const fieldCaption = el("div", "fm-caption fm-field-caption");
  fieldCaption.hidden = true;
  overlayBox.append(
    el("div", "fm-section-title", "On the input"),
    overlay,
    inputMarker,
    fieldBox,
    opacityField,
    overlayCaption,
    fieldCaption,
  );
  side.append(
    el("div", "fm-section-title", "Histogram"),
    histCanvas,
    histCaption,
    el("div", "fm-section-title", "Statistics"),
    stats,
    filterBox,
  );
  const body = el("div", "fm-detail-body");
  body.append(mapBox, side, overlayBox);
  element.append(head, approx, message, body);
  container.append(element);
  const explain = createExplain(element, { source: ctx.source, onShow: () => drawField() }, exactValue);
  const examples = createExamples(element, { source: ctx.source, scan: ctx.scan, revision: ctx.revision });

  let channel: number | null = null;
  let loaded: Loaded | null = null;
  let input: InputImage | null = null;
  let wanted = "";
  let range: [number, number] = [0, 1];

  const keyOf = (ch: number): string => {
    const layer = ctx.layer();
    return JSON.stringify([ctx.revision(), ctx.sample(), layer?.name ?? "", ch]);
  };

  function channelCount(): number {
    return ctx.layer()?.shape[1] ?? 0;
  }

  function step(delta: number): void {
    if (channel === null) return;
    const target = channel + delta;
    if (target >= 0 && target < channelCount()) ctx.onNavigate(target);
  }

  function setMessage(text: string, isError = false): void {
    message.textContent = text;
    message.hidden = text === "";
    message.classList.toggle("fm-error-text", isError);
  }

  function updateTitle(): void {
    const layer = ctx.layer();
    title.textContent = channel === null ? "" : `${layer?.name ?? ""} — channel ${channel} of ${channelCount()}`;
    prev.disabled = channel === null || channel <= 0;
    next.disabled = channel === null || channel >= channelCount() - 1;
  }

  function fetchChannel(ch: number): void {
    const layer = ctx.layer();
    if (layer === undefined) return;
    const key = keyOf(ch);
    wanted = key;
    explain.reset();
    setMessage(`Loading channel ${ch}…`);
    element.dataset.state = "loading";
    // The previous channel stays while the next one loads (no flicker when stepping), visibly dimmed.
    body.classList.add("fm-stale");
    ctx.source
      .channel({ layer: layer.name, sample: ctx.sample(), channel: ch })
      .then((data) => {
        if (wanted !== key) return;
        loaded = { ...data, key, stats: channelStats(data.values) };
        showApprox(data);
        setMessage("");
        element.dataset.state = "ready";
        body.classList.remove("fm-stale");
        body.hidden = false;
        draw();
      })
      .catch((e: unknown) => {
        if (isDropped(e) || wanted !== key) return;
        element.dataset.state = "error";
        // No picture of another channel under this channel's error.
        body.hidden = true;
        loaded = null;
        // Showing the same channel again retries it.
        wanted = "";
        setMessage(`Could not load channel ${ch} of ${layer.name}: ${(e as Error).message}`, true);
      });
  }

  function showApprox(data: ChannelData): void {
    const q = data.quantized;
    approx.hidden = q === null;
    if (q === null) return;
    const at = q.downsample > 1 ? `, at 1/${q.downsample} resolution` : "";
    approx.textContent =
      `Values from the saved 8-bit data (this channel's range in 254 steps, ±${formatValue(q.step / 2)}${at}); ` +
      "the exact float32 values need the notebook.";
  }

  function fetchInput(): void {
    const key = JSON.stringify([ctx.revision(), ctx.sample()]);
    if (input?.key === key) return;
    input = null;
    overlayCaption.textContent = "Loading the input image…";
    ctx.source.input(ctx.sample(), "input").then(
      (picture) => {
        input = { key, ...picture };
        overlayCaption.textContent = `Input ${picture.width} × ${picture.height}; the map is stretched to cover it.`;
        drawOverlay();
      },
      (e: unknown) => {
        if (!isDropped(e)) overlayCaption.textContent = `No input image: ${(e as Error).message}`;
      },
    );
  }

  function draw(): void {
    if (loaded === null) return;
    const layer = ctx.layer();
    const [gMin, gMax] = ctx.globalRange();
    range = displayRange(
      ctx.scope(),
      ctx.symmetric(),
      loaded.stats.min,
      loaded.stats.max,
      layer?.min ?? loaded.stats.min,
      layer?.max ?? loaded.stats.max,
      gMin,
      gMax,
    );
    map.width = loaded.width;
    map.height = loaded.height;
    const image = new ImageData(loaded.width, loaded.height);
    paint(loaded.values, colormapLUT(ctx.colormap()), range[0], range[1], image.data);
    map.getContext("2d")?.putImageData(image, 0, 0);
    map.style.aspectRatio = `${loaded.width} / ${loaded.height}`;
    // The element is exactly the drawn map (no letterbox margins): pointer positions map to pixels
    // by the element's box, and a tall map is narrowed rather than padded.
    map.style.width = `min(100%, ${((MAP_MAX_HEIGHT * loaded.width) / loaded.height).toFixed(2)}px)`;
    drawHistogram(histCanvas, histCaption, loaded, themeColors(element));
    drawStats(stats, loaded, ctx.flags(loaded.channel, loaded.layer) ?? 0);
    drawFilter(filterBox, filterCanvas, filterCaption, loaded.filter);
    drawOverlay();
  }

  function drawOverlay(): void {
    drawOnInput(overlayBox, overlay, map, loaded, input, opacity.valueAsNumber);
    drawField();
  }

  /** The explained pixel's receptive field on the input, when the explanation is this channel's. */
  function drawField(): void {
    const e: Explanation | null = explain.shown;
    const current = e !== null && loaded !== null && e.layer === loaded.layer && e.channel === loaded.channel;
    if (!current || e.box === null || e.inputShape === null || input === null) {
      fieldBox.hidden = true;
      fieldCaption.hidden = true;
      return;
    }
    placeBox(fieldBox, overlay, e.box, e.inputShape);
    const [top, left, bottom, right] = e.box;
    fieldCaption.hidden = false;
    fieldCaption.textContent =
      `Box: the receptive field of (row ${e.row}, col ${e.col}), input rows ${top}–${bottom - 1}, ` +
      `cols ${left}–${right - 1} (${bottom - top} × ${right - left} of ${e.inputShape[0]} × ${e.inputShape[1]})`;
  }

  /** The map pixel under the pointer, or null outside the map. */
  function pixelAt(ev: MouseEvent): { row: number; col: number } | null {
    if (loaded === null) return null;
    const rect = map.getBoundingClientRect();
    const col = Math.floor(((ev.clientX - rect.left) / rect.width) * loaded.width);
    const row = Math.floor(((ev.clientY - rect.top) / rect.height) * loaded.height);
    if (row < 0 || col < 0 || row >= loaded.height || col >= loaded.width) return null;
    return { row, col };
  }

  const onPointer = (ev: PointerEvent): void => {
    const at = pixelAt(ev);
    if (loaded === null || at === null) return;
    const { row, col } = at;
    explain.hover({ layer: loaded.layer, sample: ctx.sample(), channel: loaded.channel, row, col });
    placeMarker(mapMarker, map, row, col, loaded.height, loaded.width);
    if (input !== null) placeMarker(inputMarker, overlay, row, col, loaded.height, loaded.width);
    const v = loaded.values[row * loaded.width + col];
    const q = loaded.quantized;
    value.textContent =
      q === null
        ? `${exactValue(v)} at (row ${row}, col ${col})`
        : `${exactValue(v)} at (row ${row}, col ${col}) · from 8-bit data, ±${formatValue(q.step / 2)}`;
  };
  const onClick = (ev: MouseEvent): void => {
    const at = pixelAt(ev);
    if (loaded === null || at === null) return;
    explain.pin({ layer: loaded.layer, sample: ctx.sample(), channel: loaded.channel, ...at });
  };
  const onLeave = (): void => {
    value.textContent = "Point at the map to read a value";
    // The explained pixel stays marked while its explanation is shown.
    const e = explain.pinned ?? explain.shown;
    if (loaded !== null && e !== null && e.layer === loaded.layer && e.channel === loaded.channel) {
      placeMarker(mapMarker, map, e.row, e.col, loaded.height, loaded.width);
      if (input !== null) placeMarker(inputMarker, overlay, e.row, e.col, loaded.height, loaded.width);
      return;
    }
    mapMarker.hidden = true;
    inputMarker.hidden = true;
  };
  map.addEventListener("pointermove", onPointer);
  map.addEventListener("pointerleave", onLeave);
  map.addEventListener("click", onClick);
  opacity.addEventListener("input", drawOverlay);

  return {
    element,
    get channel(): number | null {
      return channel;
    },
    show(ch: number | null): void {
      const n = channelCount();
      if (ch === null || ch < 0 || ch >= n) {
        channel = null;
        wanted = "";
        element.hidden = true;
        examples.show(null, null);
        if (ch !== null) ctx.onNavigate(null);
        return;
      }
      channel = ch;
      element.hidden = false;
      updateTitle();
      if (loaded?.key !== keyOf(ch) && wanted !== keyOf(ch)) fetchChannel(ch);
      fetchInput();
      examples.show(ctx.layer()?.name ?? null, ch);
    },
    redraw(): void {
      if (channel === null) return;
      draw();
      explain.redraw();
    },
    handleKey(ev: KeyboardEvent): boolean {
      if (channel === null) return false;
      if (ev.key === "Escape") {
        ctx.onNavigate(null);
        return true;
      }
      const target = ev.target as HTMLElement | null;
      // Arrow keys belong to whatever input has focus (the layer slider, a select).
      if (target !== null && /^(INPUT|SELECT|TEXTAREA)$/.test(target.tagName)) return false;
      if (ev.key === "ArrowLeft" || ev.key === "ArrowRight") {
        step(ev.key === "ArrowLeft" ? -1 : 1);
        return true;
      }
      return false;
    },
    destroy(): void {
      wanted = "";
      map.removeEventListener("pointermove", onPointer);
      map.removeEventListener("pointerleave", onLeave);
      map.removeEventListener("click", onClick);
      opacity.removeEventListener("input", drawOverlay);
      explain.destroy();
      examples.destroy();
      element.remove();
    },
  };
}
