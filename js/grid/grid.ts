/**
 * The feature-map grid: one tile per channel of a layer, zoomable and pannable, with hover read-outs and
 * keyboard navigation. Draws with WebGL2 and falls back to Canvas 2D when WebGL2 is missing or its context
 * is lost (and goes back to WebGL2 when the context is restored).
 *
 * @example
 *   const grid = createGrid(container, { colormap: "viridis", scope: "layer" });
 *   grid.setLayer(data);                                  // a decoded `layer` reply
 *   grid.onClick((hit) => openChannel(hit.channel));
 *   grid.setOptions({ colormap: "magma" });               // re-draw, no re-upload
 */
import { type ColormapName, colormapLUT, NAN_COLOR } from "../colormaps";
import { dequantize, displayRange, formatValue, type Scope } from "../scale";
import { type ThemeColors, themeColors } from "../theme";
import { Canvas2DRenderer } from "./canvas2d";
import {
  clampView,
  computeLayout,
  type FullResTiles,
  hitTestLayout,
  IDENTITY_VIEW,
  type Layout,
  panBy,
  type Renderer,
  revealTile,
  tileOrigin,
  type View,
  visibleCells,
  zoomAround,
} from "./layout";
import { drawOverlay } from "./overlay";
import { WebGLRenderer } from "./webgl";

export interface LayerData {
  layer: string;
  channels: number;
  /** Stored (maybe downsampled) size of a map. */
  height: number;
  width: number;
  fullHeight: number;
  fullWidth: number;
  downsample: number;
  /** channels × height × width, quantized per protocol.md (q = 255: NaN/±Inf). */
  values: Uint8Array;
  /** channels × 6: min, max, mean, zeros (fraction), nan (count), inf (count). */
  stats: Float32Array;
  /** Per channel: 1 dead, 2 constant, 4 non-finite. */
  flags: Uint8Array;
  /** Batch range of the layer (LayerMeta min/max). */
  layerMin: number;
  layerMax: number;
}

export interface GridOptions {
  colormap: ColormapName;
  scope: Scope;
  symmetric: boolean;
  globalRange: [number, number];
  /** Channel shown in each tile, in order (after sorting / top-k); null = 0..C-1. Out-of-range entries are skipped. */
  order: Int32Array | null;
  selected: ReadonlySet<number>;
  /** Channels zeroed by the last ablation (marked on their tiles and in the tooltip). */
  ablated: ReadonlySet<number>;
  /** Optional per-channel number printed on tiles (e.g. Grad-CAM weight), indexed by channel. */
  badges: Float32Array | null;
  /** What the badge number is, in the tooltip ("Grad-CAM weight", "d"). */
  badgeLabel: string;
  /** Largest height of the grid in CSS px at zoom 1 (0 = as tall as a near-square grid needs). */
  maxHeight: number;
}

/**
 * A point of the grid: the channel, the data pixel (row, col; multiply by `downsample` for
 * full-resolution coordinates: 1 on a tile shown at full resolution), its dequantized value
 * (approximate: 8 bits per channel range) and the tile's index in the drawing order. A tile activated
 * from the keyboard reports pixel (0, 0).
 */
export interface HitInfo {
  channel: number;
  row: number;
  col: number;
  value: number;
  tileIndex: number;
  downsample: number;
}

/**
 * Zoom and pan in a form independent of the grid's pixel size: `zoom` (1 = the whole grid fits) and the
 * centre of the visible part as a fraction of the grid's width (`x`) and height (`y`).
 */
export interface ViewState {
  zoom: number;
  x: number;
  y: number;
}

/** What is on screen: the channels whose tiles are at least partly visible, and CSS px per stored pixel. */
export interface VisibleTiles {
  channels: number[];
  pixelSize: number;
}

export interface Grid {
  /** Container of the canvases and the tooltip; appended to the container given to createGrid. */
  readonly element: HTMLElement;
  /** The interactive canvas (aria-label "Feature maps", data-columns / data-rows of the unzoomed layout). */
  readonly canvas: HTMLCanvasElement;
  readonly backend: "webgl2" | "canvas2d";
  /**
   * Shows a layer: its values are uploaded once; zoom, pan and focus are kept when the new layer has the
   * same channel count and map size (another sample, the activation partner). Drops full-resolution tiles.
   */
  setLayer(data: LayerData): void;
  /** Changes how the layer is drawn; never re-uploads values. */
  setOptions(opts: Partial<GridOptions>): void;
  /** Re-fits the layout to the element's width (also done by a ResizeObserver). */
  resize(): void;
  resetView(): void;
  /** The current zoom and pan. */
  getView(): ViewState;
  /**
   * Applies a zoom and pan (clamped to the grid) without reporting it as a user change; before the first
   * layout it is kept and applied then. Non-finite numbers are ignored.
   */
  setView(view: ViewState): void;
  /** Called once per frame after the view changed; `byUser` is false for setView and re-layouts. */
  onViewChange(cb: (view: ViewState, byUser: boolean) => void): void;
  /** The visible tiles under the current view (empty before the first layout). */
  visibleTiles(): VisibleTiles;
  /**
   * Draws some channels of the shown (downsampled) layer at full resolution over their tiles; hit
   * testing, values and tooltips follow. The maps use the layer's per-channel ranges. Null removes them.
   */
  setFullRes(tiles: FullResTiles | null): void;
  /** Zooms by `factor` around a client point (default: the centre of the grid). */
  zoomBy(factor: number, clientX?: number, clientY?: number): void;
  hitTest(clientX: number, clientY: number): HitInfo | null;
  /** Client rectangle of a channel's tile under the current view, or null when it is not shown. */
  tileClientRect(channel: number): DOMRect | null;
  onClick(cb: (hit: HitInfo, ev: MouseEvent) => void): void;
  onHover(cb: (hit: HitInfo | null) => void): void;
  /** Called once per setLayer, after the first frame showing that layer has been drawn. */
  onDrawn(cb: (layer: string) => void): void;
  /** Puts the focus ring on a channel's tile and pans it into view; Enter on it acts as a click. */
  focusTile(channel: number): void;
  /** Re-reads the theme's CSS variables (call after a JupyterLab theme change). */
  refreshTheme(): void;
  /** Frees GL objects and the context, listeners, observers and the DOM; the grid is unusable after. */
  destroy(): void;
}

const DEFAULTS: GridOptions = {
  colormap: "gray",
  scope: "channel",
  symmetric: false,
  globalRange: [0, 1],
  order: null,
  selected: new Set<number>(),
  ablated: new Set<number>(),
  badges: null,
  badgeLabel: "weight",
  maxHeight: 0,
};

const KEY_ZOOM = 1.5;
/** A press that moves less than this (CSS px) is a click, not a drag. */
const DRAG_THRESHOLD = 4;

function makeCanvas(className: string): HTMLCanvasElement {
  const c = document.createElement("canvas");
  c.className = className;
  c.style.position = "absolute";
  c.style.left = "0";
  c.style.top = "0";
  return c;
}

function checkLayer(d: LayerData): void {
  const n = d.channels * d.height * d.width;
  const problems: string[] = [];
  if (!(d.channels >= 1 && d.height >= 1 && d.width >= 1)) problems.push(`shape ${d.channels}×${d.height}×${d.width}`);
  if (d.values.length !== n) problems.push(`values has ${d.values.length} entries, expected ${n}`);
  if (d.stats.length !== 6 * d.channels)
    problems.push(`stats has ${d.stats.length} entries, expected ${6 * d.channels}`);
  if (d.flags.length !== d.channels) problems.push(`flags has ${d.flags.length} entries, expected ${d.channels}`);
  if (problems.length > 0) throw new Error(`grid: layer "${d.layer}" is malformed: ${problems.join("; ")}`);
}

/** The dequantized value of a stored pixel (NaN for non-finite). */
function valueAt(d: LayerData, channel: number, row: number, col: number): number {
  const q = d.values[(channel * d.height + row) * d.width + col];
  return dequantize(q, d.stats[6 * channel], d.stats[6 * channel + 1]);
}

/**
 * Creates a grid inside `container` (it fills the container's width).
 *
 * @example
 *   const grid = createGrid(document.querySelector(".stage")!, { colormap: "gray" });
 */
export function createGrid(container: HTMLElement, options: Partial<GridOptions> = {}): Grid {
  const opts: GridOptions = { ...DEFAULTS, ...options };
  const element = document.createElement("div");
  element.className = "fm-grid";
  element.style.position = "relative";
  element.style.width = "100%";
  element.style.overflow = "hidden";
  const overlay = makeCanvas("fm-grid-canvas");
  overlay.style.position = "relative";
  overlay.style.display = "block";
  overlay.style.touchAction = "none";
  overlay.tabIndex = 0;
  overlay.setAttribute("aria-label", "Feature maps");
  overlay.setAttribute("role", "img");
  overlay.dataset.columns = "0";
  overlay.dataset.rows = "0";
  const tooltip = document.createElement("div");
  tooltip.className = "fm-grid-tooltip";
  tooltip.setAttribute("role", "status");
  tooltip.style.position = "absolute";
  tooltip.style.pointerEvents = "none";
  tooltip.hidden = true;
  const glCanvas = makeCanvas("fm-grid-picture");
  let pictureCanvas: HTMLCanvasElement | null = null;
  element.append(glCanvas, overlay, tooltip);
  container.append(element);
  const ctx2d = overlay.getContext("2d");
  if (ctx2d === null) throw new Error("grid: the browser could not create a 2D canvas context");
  const overlayCtx: CanvasRenderingContext2D = ctx2d;

  const listeners = new AbortController();
  const signal = listeners.signal;
  let renderer: Renderer;
  let data: LayerData | null = null;
  let layout: Layout | null = null;
  let view: View = IDENTITY_VIEW;
  /** The view last reported to onViewChange, whether the user changed it since, and one set before any layout. */
  let reportedView: View = IDENTITY_VIEW;
  let userMoved = false;
  let pendingView: ViewState | null = null;
  let full: FullResTiles | null = null;
  /** Channel → index in `full`. */
  let fullSlot = new Map<number, number>();
  let order = new Int32Array(0);
  let ranges = new Float32Array(0);
  let dpr = window.devicePixelRatio || 1;
  let theme: ThemeColors = themeColors(element);
  let focused: number | null = null;
  let pointer: { x: number; y: number } | null = null;
  let hovered: HitInfo | null = null;
  let drawnPending: string | null = null;
  let raf = 0;
  let needDraw = false;
  let needHover = false;
  let needLayout = false;
  let inFrame = false;
  let destroyed = false;
  /** The last interaction was a key press: the focused tile's tooltip is shown while no pointer hovers. */
  let keyboardMode = false;
  const clickCbs: ((hit: HitInfo, ev: MouseEvent) => void)[] = [];
  const hoverCbs: ((hit: HitInfo | null) => void)[] = [];
  const drawnCbs: ((layer: string) => void)[] = [];
  const viewCbs: ((view: ViewState, byUser: boolean) => void)[] = [];

  function useCanvas2D(): Renderer {
    glCanvas.hidden = true;
    if (pictureCanvas === null) {
      pictureCanvas = makeCanvas("fm-grid-picture");
      element.insertBefore(pictureCanvas, overlay);
    }
    pictureCanvas.hidden = false;
    return new Canvas2DRenderer(pictureCanvas);
  }

  function useWebGL(): Renderer | null {
    try {
      const r = new WebGLRenderer(glCanvas);
      glCanvas.hidden = false;
      if (pictureCanvas !== null) pictureCanvas.hidden = true;
      return r;
    } catch (e) {
      console.warn(`fmwidget: ${(e as Error).message}; drawing with Canvas 2D instead`);
      return null;
    }
  }

  /** Hands the current layer and settings to a fresh renderer. */
  function feed(r: Renderer): void {
    r.setColormap(colormapLUT(opts.colormap), NAN_COLOR);
    if (data !== null) {
      r.setValues(data);
      r.setRanges(ranges);
      r.setOrder(order);
      r.setFullRes(full);
    }
  }

  renderer = useWebGL() ?? useCanvas2D();
  feed(renderer);
  // For tests and automation: which backend draws.
  overlay.dataset.backend = renderer.kind;

  function computeRanges(): void {
    if (data === null) return;
    const s = data.stats;
    const [gMin, gMax] = opts.globalRange;
    ranges = new Float32Array(4 * data.channels);
    for (let c = 0; c < data.channels; c++) {
      const [lo, hi] = displayRange(
        opts.scope,
        opts.symmetric,
        s[6 * c],
        s[6 * c + 1],
        data.layerMin,
        data.layerMax,
        gMin,
        gMax,
      );
      ranges.set([s[6 * c], s[6 * c + 1], lo, hi], 4 * c);
    }
    renderer.setRanges(ranges);
  }

  function computeOrder(): void {
    if (data === null) return;
    const channels = data.channels;
    if (opts.order === null) {
      order = new Int32Array(channels);
      for (let c = 0; c < channels; c++) order[c] = c;
    } else {
      order = opts.order.filter((c) => c >= 0 && c < channels);
    }
    renderer.setOrder(order);
  }

  function sizeCanvas(c: HTMLCanvasElement, w: number, h: number): void {
    c.style.width = `${w}px`;
    c.style.height = `${h}px`;
    c.width = Math.max(1, Math.round(w * dpr));
    c.height = Math.max(1, Math.round(h * dpr));
  }

  function relayout(): void {
    const width = element.clientWidth;
    if (data === null || width <= 0) return;
    if (order.length === 0) {
      layout = null;
      overlay.dataset.columns = "0";
      overlay.dataset.rows = "0";
    } else {
      const old = layout;
      layout = computeLayout(order.length, data.height, data.width, width, opts.maxHeight);
      if (
        old === null ||
        old.tileWidth !== layout.tileWidth ||
        old.columns !== layout.columns ||
        old.count !== layout.count
      ) {
        view = IDENTITY_VIEW;
      }
      view = clampView(view, layout);
      if (pendingView !== null) {
        view = fromViewState(pendingView, layout);
        pendingView = null;
      }
      overlay.dataset.columns = String(layout.columns);
      overlay.dataset.rows = String(layout.rows);
      // Unzoomed tile geometry in CSS px, for automation: tile i sits at (i % columns, i / columns) cells.
      overlay.dataset.tileWidth = String(layout.tileWidth);
      overlay.dataset.tileHeight = String(layout.tileHeight);
      overlay.dataset.cellWidth = String(layout.cellWidth);
      overlay.dataset.cellHeight = String(layout.cellHeight);
    }
    const w = layout?.viewportWidth ?? width;
    const h = layout?.viewportHeight ?? 0;
    element.style.height = `${h}px`;
    for (const c of [glCanvas, overlay, pictureCanvas]) if (c !== null) sizeCanvas(c, w, h);
    requestDraw();
  }

  function requestDraw(hoverOnly = false): void {
    if (destroyed) return;
    if (hoverOnly) needHover = true;
    else needDraw = needHover = true;
    if (raf === 0 && !inFrame) raf = requestAnimationFrame(frame);
  }

  function frame(): void {
    raf = 0;
    inFrame = true;
    try {
      drawFrame();
    } finally {
      inFrame = false;
    }
    // Callbacks run during the frame (onDrawn, onHover) may have asked for another one.
    if ((needDraw || needHover || needLayout) && raf === 0 && !destroyed) raf = requestAnimationFrame(frame);
  }

  function drawFrame(): void {
    if (needLayout) {
      needLayout = false;
      relayout();
    }
    if (needDraw) {
      needDraw = false;
      if (layout !== null && data !== null) {
        renderer.draw(layout, view, dpr);
        drawOverlay(overlayCtx, {
          layout,
          view,
          dpr,
          order,
          layer: data,
          ranges,
          lut: colormapLUT(opts.colormap),
          theme,
          selected: opts.selected,
          ablated: opts.ablated,
          focused,
          badges: opts.badges,
          full,
        });
      } else {
        // Nothing to show (no layer, or an empty order): relayout() already cleared the canvases by resizing.
        overlayCtx.clearRect(0, 0, overlay.width, overlay.height);
      }
      // Only a frame that really showed the layer counts (a hidden, zero-width grid draws nothing).
      if (
        drawnPending !== null &&
        data !== null &&
        (layout !== null || order.length === 0) &&
        element.clientWidth > 0
      ) {
        const name = drawnPending;
        drawnPending = null;
        for (const cb of drawnCbs) cb(name);
      }
    }
    if (needHover) {
      needHover = false;
      updateHover();
    }
    if (view.k !== reportedView.k || view.x !== reportedView.x || view.y !== reportedView.y) {
      reportedView = view;
      const byUser = userMoved;
      userMoved = false;
      const state = getView();
      for (const cb of viewCbs) cb(state, byUser);
    }
  }

  function getView(): ViewState {
    if (layout === null) return pendingView ?? { zoom: 1, x: 0.5, y: 0.5 };
    const { viewportWidth: w, viewportHeight: h } = layout;
    return {
      zoom: view.k,
      x: w > 0 ? (w / 2 - view.x) / view.k / w : 0.5,
      y: h > 0 ? (h / 2 - view.y) / view.k / h : 0.5,
    };
  }

  function fromViewState(v: ViewState, l: Layout): View {
    const { viewportWidth: w, viewportHeight: h } = l;
    return clampView({ k: v.zoom, x: w / 2 - v.zoom * v.x * w, y: h / 2 - v.zoom * v.y * h }, l);
  }

  function visibleTiles(): VisibleTiles {
    if (layout === null) return { channels: [], pixelSize: 0 };
    const { c0, c1, r0, r1 } = visibleCells(layout, view);
    const channels: number[] = [];
    const n = Math.min(order.length, layout.count);
    for (let r = r0; r <= r1; r++) {
      for (let c = c0; c <= c1; c++) {
        const i = r * layout.columns + c;
        if (i < n) channels.push(order[i]);
      }
    }
    return { channels, pixelSize: layout.scale * view.k };
  }

  function hitAt(sx: number, sy: number): HitInfo | null {
    if (layout === null || data === null) return null;
    const hit = hitTestLayout(layout, view, sx, sy);
    if (hit === null) return null;
    const channel = order[hit.tileIndex];
    const slot = fullSlot.get(channel);
    if (full !== null && slot !== undefined) {
      // Inside this tile the full-resolution map is drawn: the pixel is one of its pixels.
      const [tx, ty] = tileOrigin(layout, hit.tileIndex);
      const lx = (sx - view.x) / view.k - tx;
      const ly = (sy - view.y) / view.k - ty;
      const row = Math.min(full.height - 1, Math.max(0, Math.floor((ly / layout.tileHeight) * full.height)));
      const col = Math.min(full.width - 1, Math.max(0, Math.floor((lx / layout.tileWidth) * full.width)));
      const q = full.values[(slot * full.height + row) * full.width + col];
      const value = dequantize(q, data.stats[6 * channel], data.stats[6 * channel + 1]);
      return { channel, row, col, value, tileIndex: hit.tileIndex, downsample: 1 };
    }
    const value = valueAt(data, channel, hit.row, hit.col);
    return { channel, row: hit.row, col: hit.col, value, tileIndex: hit.tileIndex, downsample: data.downsample };
  }

  function hitTest(clientX: number, clientY: number): HitInfo | null {
    const rect = overlay.getBoundingClientRect();
    return hitAt(clientX - rect.left, clientY - rect.top);
  }

  function describe(channel: number, hit: HitInfo | null): string[] {
    if (data === null) return [];
    const s = data.stats.subarray(6 * channel, 6 * channel + 6);
    const flags = data.flags[channel];
    const marks: string[] = [];
    if ((flags & 1) !== 0) marks.push("dead");
    if ((flags & 2) !== 0) marks.push("constant");
    if ((flags & 4) !== 0) marks.push("has NaN/Inf");
    const lines = [
      `Channel ${channel}${marks.length > 0 ? ` · ${marks.join(" · ")}` : ""}`,
      `min ${formatValue(s[0])} · max ${formatValue(s[1])} · mean ${formatValue(s[2])}`,
      `zeros ${formatValue(100 * s[3])}% · NaN ${s[4]} · Inf ${s[5]}`,
    ];
    if (opts.badges !== null && channel < opts.badges.length)
      lines.push(`${opts.badgeLabel} ${formatValue(opts.badges[channel])}`);
    if (opts.ablated.has(channel)) lines.push("Zeroed in the last ablation");
    if (hit !== null) {
      const f = hit.downsample;
      const where =
        f > 1 ? `mean of ${f}×${f} at row ${hit.row * f}, col ${hit.col * f}` : `row ${hit.row}, col ${hit.col}`;
      lines.push(`${where}: ≈ ${formatValue(hit.value)} (8-bit; exact in the channel view)`);
    }
    return lines;
  }

  function showTooltip(lines: string[], x: number, y: number): void {
    tooltip.replaceChildren(
      ...lines.map((text) => {
        const line = document.createElement("div");
        line.textContent = text;
        return line;
      }),
    );
    tooltip.hidden = false;
    const bw = element.clientWidth;
    const bh = element.clientHeight;
    const tw = tooltip.offsetWidth;
    const th = tooltip.offsetHeight;
    const left = x + 14 + tw > bw ? Math.max(0, x - 14 - tw) : x + 14;
    const top = y + 14 + th > bh ? Math.max(0, y - 14 - th) : y + 14;
    tooltip.style.left = `${left}px`;
    tooltip.style.top = `${top}px`;
  }

  function updateHover(): void {
    let hit: HitInfo | null = null;
    if (pointer !== null) {
      hit = hitAt(pointer.x, pointer.y);
      if (hit !== null) showTooltip(describe(hit.channel, hit), pointer.x, pointer.y);
    }
    if (hit === null) {
      const rect = focused !== null && keyboardMode && document.activeElement === overlay ? tileRect(focused) : null;
      if (rect !== null && focused !== null) showTooltip(describe(focused, null), rect.x, rect.y + rect.h - 14);
      else tooltip.hidden = true;
    }
    const same =
      hit === hovered ||
      (hit !== null &&
        hovered !== null &&
        hit.channel === hovered.channel &&
        hit.row === hovered.row &&
        hit.col === hovered.col);
    if (!same) {
      hovered = hit;
      for (const cb of hoverCbs) cb(hit);
    }
  }

  /** A tile's rectangle in canvas CSS px under the current view. */
  function tileRect(channel: number): { x: number; y: number; w: number; h: number } | null {
    if (layout === null) return null;
    const i = order.indexOf(channel);
    if (i < 0 || i >= layout.count) return null;
    const [wx, wy] = tileOrigin(layout, i);
    return {
      x: wx * view.k + view.x,
      y: wy * view.k + view.y,
      w: layout.tileWidth * view.k,
      h: layout.tileHeight * view.k,
    };
  }

  /** A view change made by the user (reported with byUser = true). */
  function moveView(v: View): void {
    if (layout === null) return;
    view = clampView(v, layout);
    userMoved = true;
    requestDraw();
  }

  function zoomBy(factor: number, clientX?: number, clientY?: number): void {
    if (layout === null) return;
    const rect = overlay.getBoundingClientRect();
    const sx = clientX === undefined ? layout.viewportWidth / 2 : clientX - rect.left;
    const sy = clientY === undefined ? layout.viewportHeight / 2 : clientY - rect.top;
    moveView(zoomAround(view, layout, factor, sx, sy));
  }

  function focusTile(channel: number): void {
    focused = channel;
    if (layout !== null) {
      const i = order.indexOf(channel);
      if (i >= 0) moveView(revealTile(view, layout, i));
    }
    requestDraw();
  }

  function moveFocus(dCol: number, dRow: number): void {
    if (layout === null || order.length === 0) return;
    let i = focused === null ? -1 : order.indexOf(focused);
    if (i < 0) i = 0;
    else {
      const col = Math.min(layout.columns - 1, Math.max(0, (i % layout.columns) + dCol));
      const row = Math.min(layout.rows - 1, Math.max(0, Math.floor(i / layout.columns) + dRow));
      i = Math.min(order.length - 1, row * layout.columns + col);
    }
    focusTile(order[i]);
  }

  function click(hit: HitInfo, ev: MouseEvent): void {
    focused = hit.channel;
    requestDraw();
    for (const cb of clickCbs) cb(hit, ev);
  }

  // Interaction. Every handler only updates state and asks for a frame; drawing happens once per frame.
  let press: { id: number; x: number; y: number; dragging: boolean } | null = null;
  let suppressClick = false;
  overlay.addEventListener(
    "wheel",
    (ev) => {
      if (layout === null) return;
      const lines =
        ev.deltaMode === WheelEvent.DOM_DELTA_LINE ? 16 : ev.deltaMode === WheelEvent.DOM_DELTA_PAGE ? 400 : 1;
      const factor = Math.exp(-ev.deltaY * lines * 0.0015);
      // Zooming out of an unzoomed grid scrolls the notebook instead of being swallowed.
      if (factor < 1 && view.k <= 1) return;
      ev.preventDefault();
      zoomBy(factor, ev.clientX, ev.clientY);
    },
    { signal, passive: false },
  );
  overlay.addEventListener(
    "pointerdown",
    (ev) => {
      keyboardMode = false;
      if (ev.button !== 0) return;
      press = { id: ev.pointerId, x: ev.clientX, y: ev.clientY, dragging: false };
      overlay.setPointerCapture(ev.pointerId);
    },
    { signal },
  );
  overlay.addEventListener(
    "pointermove",
    (ev) => {
      const rect = overlay.getBoundingClientRect();
      pointer = { x: ev.clientX - rect.left, y: ev.clientY - rect.top };
      if (press !== null && press.id === ev.pointerId && layout !== null) {
        const dx = ev.clientX - press.x;
        const dy = ev.clientY - press.y;
        if (press.dragging || Math.hypot(dx, dy) >= DRAG_THRESHOLD) {
          press.dragging = true;
          press.x = ev.clientX;
          press.y = ev.clientY;
          moveView(panBy(view, layout, dx, dy));
          return;
        }
      }
      requestDraw(true);
    },
    { signal },
  );
  const release = (ev: PointerEvent): void => {
    if (press === null || press.id !== ev.pointerId) return;
    suppressClick = press.dragging;
    press = null;
    if (overlay.hasPointerCapture(ev.pointerId)) overlay.releasePointerCapture(ev.pointerId);
  };
  overlay.addEventListener("pointerup", release, { signal });
  overlay.addEventListener("pointercancel", release, { signal });
  overlay.addEventListener(
    "pointerleave",
    () => {
      pointer = null;
      requestDraw(true);
    },
    { signal },
  );
  overlay.addEventListener(
    "click",
    (ev) => {
      if (suppressClick) {
        suppressClick = false;
        return;
      }
      const hit = hitTest(ev.clientX, ev.clientY);
      if (hit !== null) click(hit, ev);
    },
    { signal },
  );
  overlay.addEventListener("dblclick", () => moveView(IDENTITY_VIEW), { signal });
  overlay.addEventListener(
    "keydown",
    (ev) => {
      if (layout === null || ev.altKey || ev.ctrlKey || ev.metaKey) return;
      const step = 0.1 * Math.min(layout.viewportWidth, layout.viewportHeight);
      const arrows: Record<string, [number, number]> = {
        ArrowLeft: [-1, 0],
        ArrowRight: [1, 0],
        ArrowUp: [0, -1],
        ArrowDown: [0, 1],
      };
      const arrow = arrows[ev.key];
      if (ev.key === "+" || ev.key === "=") {
        const r = focused === null ? null : tileRect(focused);
        const rect = overlay.getBoundingClientRect();
        if (r !== null) zoomBy(KEY_ZOOM, rect.left + r.x + r.w / 2, rect.top + r.y + r.h / 2);
        else zoomBy(KEY_ZOOM);
      } else if (ev.key === "-" || ev.key === "_") zoomBy(1 / KEY_ZOOM);
      else if (ev.key === "0") moveView(IDENTITY_VIEW);
      else if (arrow !== undefined && ev.shiftKey) moveView(panBy(view, layout, -arrow[0] * step, -arrow[1] * step));
      else if (arrow !== undefined) moveFocus(arrow[0], arrow[1]);
      // Shift+Enter runs the cell (JupyterLab); Shift+Space is the keyboard's shift-click (select).
      else if (
        ((ev.key === "Enter" && !ev.shiftKey) || ev.key === " ") &&
        focused !== null &&
        data !== null &&
        focused < data.channels
      ) {
        const i = order.indexOf(focused);
        if (i < 0) return;
        const mouse = new MouseEvent("click", { shiftKey: ev.shiftKey });
        const downsample = fullSlot.has(focused) ? 1 : data.downsample;
        click(
          { channel: focused, row: 0, col: 0, value: valueAt(data, focused, 0, 0), tileIndex: i, downsample },
          mouse,
        );
      } else return;
      keyboardMode = true;
      // JupyterLab's shortcuts would otherwise act on these keys too.
      ev.preventDefault();
      ev.stopPropagation();
    },
    { signal },
  );
  overlay.addEventListener(
    "focus",
    () => {
      if (overlay.matches(":focus-visible")) {
        keyboardMode = true;
        if (focused === null && order.length > 0) focused = order[0];
      }
      requestDraw();
    },
    { signal },
  );
  overlay.addEventListener("blur", () => requestDraw(true), { signal });

  glCanvas.addEventListener(
    "webglcontextlost",
    (ev) => {
      // preventDefault is what allows the browser to restore the context later.
      ev.preventDefault();
      renderer = useCanvas2D();
      overlay.dataset.backend = renderer.kind;
      feed(renderer);
      relayout();
    },
    { signal },
  );
  glCanvas.addEventListener(
    "webglcontextrestored",
    () => {
      const r = useWebGL();
      if (r === null) return;
      renderer.destroy();
      renderer = r;
      overlay.dataset.backend = renderer.kind;
      feed(renderer);
      requestDraw();
    },
    { signal },
  );

  let lastWidth = -1;
  // Re-layout in the next frame, not in the callback: resizing there would re-trigger the observer
  // ("ResizeObserver loop completed with undelivered notifications").
  const resizeObserver = new ResizeObserver(() => {
    if (element.clientWidth !== lastWidth) {
      lastWidth = element.clientWidth;
      needLayout = true;
      requestDraw();
    }
  });
  resizeObserver.observe(element);

  // devicePixelRatio has no change event; a media query on the current ratio fires when it changes.
  function watchDpr(): void {
    matchMedia(`(resolution: ${dpr}dppx)`).addEventListener(
      "change",
      () => {
        dpr = window.devicePixelRatio || 1;
        relayout();
        if (!signal.aborted) watchDpr();
      },
      { signal, once: true },
    );
  }
  watchDpr();

  const grid: Grid = {
    element,
    canvas: overlay,
    get backend() {
      return renderer.kind;
    },
    setLayer(d: LayerData): void {
      checkLayer(d);
      // Another sample, or the activation partner of a conv: same tiles, so the user's zoom and focus stay.
      const sameKind =
        data !== null && data.channels === d.channels && data.height === d.height && data.width === d.width;
      if (!sameKind) {
        layout = null;
        focused = null;
      }
      data = d;
      full = null;
      fullSlot = new Map();
      try {
        renderer.setValues(d);
      } catch (e) {
        if (renderer.kind !== "webgl2") throw e;
        // Beyond the GPU's texture limits (a very wide map): Canvas 2D has no such limit.
        console.warn(`fmwidget: ${(e as Error).message}; drawing with Canvas 2D instead`);
        renderer.destroy();
        renderer = useCanvas2D();
        overlay.dataset.backend = renderer.kind;
        feed(renderer);
      }
      computeRanges();
      computeOrder();
      drawnPending = d.layer;
      relayout();
      requestDraw();
    },
    setOptions(o: Partial<GridOptions>): void {
      Object.assign(opts, o);
      if (o.colormap !== undefined) renderer.setColormap(colormapLUT(opts.colormap), NAN_COLOR);
      if (o.scope !== undefined || o.symmetric !== undefined || o.globalRange !== undefined) computeRanges();
      if (o.order !== undefined) computeOrder();
      if (o.order !== undefined || o.maxHeight !== undefined) relayout();
      requestDraw();
    },
    resize: relayout,
    resetView(): void {
      if (layout === null) return;
      view = IDENTITY_VIEW;
      requestDraw();
    },
    getView,
    setView(v: ViewState): void {
      if (![v?.zoom, v?.x, v?.y].every((n) => typeof n === "number" && Number.isFinite(n))) return;
      if (layout === null) {
        pendingView = { zoom: v.zoom, x: v.x, y: v.y };
        return;
      }
      view = fromViewState(v, layout);
      requestDraw();
    },
    onViewChange: (cb) => void viewCbs.push(cb),
    visibleTiles,
    setFullRes(tiles: FullResTiles | null): void {
      if (data === null) return;
      const channels = data.channels;
      if (tiles !== null && tiles.channels.some((c) => !(c >= 0 && c < channels))) {
        throw new Error(
          `grid: full-resolution tiles for channels ${tiles.channels.join(", ")}; layer "${data.layer}" has ${data.channels}`,
        );
      }
      full = tiles;
      fullSlot = new Map();
      tiles?.channels.forEach((c, slot) => {
        fullSlot.set(c, slot);
      });
      renderer.setFullRes(tiles);
      requestDraw();
    },
    zoomBy,
    hitTest,
    tileClientRect(channel: number): DOMRect | null {
      const r = tileRect(channel);
      if (r === null) return null;
      const rect = overlay.getBoundingClientRect();
      return new DOMRect(rect.left + r.x, rect.top + r.y, r.w, r.h);
    },
    onClick: (cb) => void clickCbs.push(cb),
    onHover: (cb) => void hoverCbs.push(cb),
    onDrawn: (cb) => void drawnCbs.push(cb),
    focusTile,
    refreshTheme(): void {
      theme = themeColors(element);
      requestDraw();
    },
    destroy(): void {
      if (destroyed) return;
      destroyed = true;
      if (raf !== 0) cancelAnimationFrame(raf);
      raf = 0;
      // Listeners go first: losing the GL context below must not trigger the Canvas 2D fallback.
      listeners.abort();
      resizeObserver.disconnect();
      renderer.destroy();
      clickCbs.length = hoverCbs.length = drawnCbs.length = viewCbs.length = 0;
      data = null;
      element.remove();
    },
  };
  return grid;
}
