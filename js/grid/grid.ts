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
import { STATS_WIDTH, statOf } from "../protocol";
import { displayRange, type Scope } from "../scale";
import { type ThemeColors, themeColors } from "../theme";
import { Camera } from "./camera";
import { FrameLoop, type FrameWork } from "./frames";
import {
  computeLayout,
  type FullResTiles,
  type Layout,
  type Renderer,
  revealTile,
  type View,
  zoomAround,
} from "./layout";
import { drawOverlay } from "./overlay";
import {
  pickAt,
  type Scene,
  samePixel,
  slotsOf,
  stepFocus,
  tileClientRectOf,
  tileHit,
  tileRectOf,
  visibleTilesOf,
} from "./picking";
import { attachPointer } from "./pointer";
import { Surface } from "./surface";
import { createTooltip, describeTile, type TileMarks } from "./tooltip";

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
  /** channels × STATS_WIDTH, columns STATS_FIELDS (min, max, mean, zeros, nan, inf): read with `statOf`. */
  stats: Float32Array;
  /** Per channel: 1 dead, 2 constant, 4 non-finite, 8 dead across the dataset (FLAG_* in protocol.ts). */
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
  /** Images of the dataset scan covering the layer (the tooltip of a channel dead across them); null: none. */
  scanImages: number | null;
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
  /**
   * Called on a click (or Enter/Space) on a tile. The callback may return a function that undoes what
   * it did: a double-click resets the zoom and calls it for the double-click's first click.
   */
  onClick(cb: (hit: HitInfo, ev: MouseEvent) => (() => void) | undefined): void;
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
  scanImages: null,
  maxHeight: 0,
};

function checkLayer(d: LayerData): void {
  const n = d.channels * d.height * d.width;
  const problems: string[] = [];
  if (!(d.channels >= 1 && d.height >= 1 && d.width >= 1)) problems.push(`shape ${d.channels}×${d.height}×${d.width}`);
  if (d.values.length !== n) problems.push(`values has ${d.values.length} entries, expected ${n}`);
  if (d.stats.length !== STATS_WIDTH * d.channels)
    problems.push(`stats has ${d.stats.length} entries, expected ${STATS_WIDTH * d.channels}`);
  if (d.flags.length !== d.channels) problems.push(`flags has ${d.flags.length} entries, expected ${d.channels}`);
  if (problems.length > 0) throw new Error(`grid: layer "${d.layer}" is malformed: ${problems.join("; ")}`);
}

/** Per channel: its [min, max] and the [lo, hi] the colormap spans under the scale options. */
function tileRanges(data: LayerData, opts: GridOptions): Float32Array {
  const s = data.stats;
  const [gMin, gMax] = opts.globalRange;
  const ranges = new Float32Array(4 * data.channels);
  for (let c = 0; c < data.channels; c++) {
    const { scope, symmetric } = opts;
    const min = statOf(s, c, "min");
    const max = statOf(s, c, "max");
    const [lo, hi] = displayRange(scope, symmetric, min, max, data.layerMin, data.layerMax, gMin, gMax);
    ranges.set([min, max, lo, hi], 4 * c);
  }
  return ranges;
}

/** The channels in drawing order: `order` without out-of-range entries, or 0..C-1. */
function drawOrder(channels: number, order: Int32Array | null): Int32Array {
  if (order !== null) return order.filter((c) => c >= 0 && c < channels);
  const all = new Int32Array(channels);
  for (let c = 0; c < channels; c++) all[c] = c;
  return all;
}

/** Hands a layer and its settings to a renderer (a fresh one, after a backend switch). */
function feedRenderer(
  r: Renderer,
  colormap: ColormapName,
  layer: { data: LayerData; ranges: Float32Array; order: Int32Array; full: FullResTiles | null } | null,
): void {
  r.setColormap(colormapLUT(colormap), NAN_COLOR);
  if (layer === null) return;
  r.setValues(layer.data);
  r.setRanges(layer.ranges);
  r.setOrder(layer.order);
  r.setFullRes(layer.full);
}

/**
 * Creates a grid inside `container` (it fills the container's width).
 *
 * @example
 *   const grid = createGrid(document.querySelector(".stage")!, { colormap: "gray" });
 */
export function createGrid(container: HTMLElement, options: Partial<GridOptions> = {}): Grid {
  const opts: GridOptions = { ...DEFAULTS, ...options };
  const listeners = new AbortController();
  const signal = listeners.signal;
  let data: LayerData | null = null;
  let layout: Layout | null = null;
  const camera = new Camera();
  let full: FullResTiles | null = null;
  /** Channel → index in `full`. */
  let fullSlot = new Map<number, number>();
  let order: Int32Array = new Int32Array(0);
  let ranges: Float32Array = new Float32Array(0);
  let focused: number | null = null;
  let pointer: { x: number; y: number } | null = null;
  let hovered: HitInfo | null = null;
  let drawnPending: string | null = null;
  let destroyed = false;
  /** The last interaction was a key press: the focused tile's tooltip is shown while no pointer hovers. */
  let keyboardMode = false;
  const clickCbs: ((hit: HitInfo, ev: MouseEvent) => (() => void) | undefined)[] = [];
  /** Undoes the last pointer click (the first click of a double-click), until the next click. */
  let undoLast: (() => void)[] = [];
  const hoverCbs: ((hit: HitInfo | null) => void)[] = [];
  const drawnCbs: ((layer: string) => void)[] = [];
  const viewCbs: ((view: ViewState, byUser: boolean) => void)[] = [];

  /** Hands the current layer and settings to a fresh renderer. */
  const feed = (r: Renderer): void =>
    feedRenderer(r, opts.colormap, data === null ? null : { data, ranges, order, full });

  const surface = new Surface(container, { feed, relayout, redraw: () => requestDraw() }, signal);
  const { element, overlay, overlayCtx } = surface;
  const tooltip = createTooltip(element);
  element.append(tooltip.element);
  let theme: ThemeColors = themeColors(element);

  function computeRanges(): void {
    if (data === null) return;
    ranges = tileRanges(data, opts);
    surface.renderer.setRanges(ranges);
  }

  function computeOrder(): void {
    if (data === null) return;
    order = drawOrder(data.channels, opts.order);
    surface.renderer.setOrder(order);
  }

  function relayout(): void {
    const width = element.clientWidth;
    if (data === null || width <= 0) return;
    if (order.length === 0) {
      layout = null;
    } else {
      const old = layout;
      layout = computeLayout(order.length, data.height, data.width, width, opts.maxHeight);
      camera.fit(old, layout);
    }
    surface.showLayout(layout, width);
    requestDraw();
  }

  const frames = new FrameLoop(drawFrame);
  const requestDraw = (hoverOnly = false): void => frames.request(hoverOnly ? "hover" : "draw");

  function drawFrame(work: FrameWork): void {
    if (work.layout) relayout();
    if (work.draw) {
      if (layout !== null && data !== null) {
        surface.renderer.draw(layout, camera.view, surface.dpr);
        drawOverlay(overlayCtx, {
          layout,
          view: camera.view,
          dpr: surface.dpr,
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
    if (work.hover) updateHover();
    const change = camera.changed(layout);
    if (change !== null) for (const cb of viewCbs) cb(change.state, change.byUser);
  }

  const scene = (): Scene => ({ layout, view: camera.view, data, order, full, fullSlot });
  const getView = (): ViewState => camera.state(layout);
  const visibleTiles = (): VisibleTiles => visibleTilesOf(scene());
  const hitAt = (sx: number, sy: number): HitInfo | null => pickAt(scene(), sx, sy);
  const tileRect = (channel: number) => tileRectOf(scene(), channel);
  const marks = (): TileMarks => opts;

  function hitTest(clientX: number, clientY: number): HitInfo | null {
    const rect = overlay.getBoundingClientRect();
    return hitAt(clientX - rect.left, clientY - rect.top);
  }

  function updateHover(): void {
    let hit: HitInfo | null = null;
    if (pointer !== null) {
      hit = hitAt(pointer.x, pointer.y);
      if (hit !== null && data !== null)
        tooltip.show(describeTile(data, hit.channel, hit, marks()), pointer.x, pointer.y);
    }
    if (hit === null) {
      const rect = focused !== null && keyboardMode && document.activeElement === overlay ? tileRect(focused) : null;
      if (rect !== null && focused !== null && data !== null) {
        tooltip.show(describeTile(data, focused, null, marks()), rect.x, rect.y + rect.h - 14);
      } else tooltip.hide();
    }
    if (!samePixel(hit, hovered)) {
      hovered = hit;
      for (const cb of hoverCbs) cb(hit);
    }
  }

  /** A view change made by the user (reported with byUser = true). */
  function moveView(v: View): void {
    if (layout === null) return;
    camera.move(v, layout);
    requestDraw();
  }

  function zoomBy(factor: number, clientX?: number, clientY?: number): void {
    if (layout === null) return;
    const rect = overlay.getBoundingClientRect();
    const sx = clientX === undefined ? layout.viewportWidth / 2 : clientX - rect.left;
    const sy = clientY === undefined ? layout.viewportHeight / 2 : clientY - rect.top;
    moveView(zoomAround(camera.view, layout, factor, sx, sy));
  }

  function focusTile(channel: number): void {
    focused = channel;
    if (layout !== null) {
      const i = order.indexOf(channel);
      if (i >= 0) moveView(revealTile(camera.view, layout, i));
    }
    requestDraw();
  }

  /** Enter/Space on the focused tile acts as a click on its first pixel. */
  function activateFocused(shift: boolean): boolean {
    const hit = focused === null ? null : tileHit(scene(), focused);
    if (hit !== null) click(hit, new MouseEvent("click", { shiftKey: shift }));
    return hit !== null;
  }

  function click(hit: HitInfo, ev: MouseEvent): void {
    const before = focused;
    focused = hit.channel;
    requestDraw();
    undoLast = [
      () => {
        focused = before;
      },
    ];
    for (const cb of clickCbs) {
      const undo = cb(hit, ev);
      if (undo !== undefined) undoLast.push(undo);
    }
  }

  function undoClick(): void {
    const undo = undoLast;
    undoLast = [];
    for (const fn of undo.reverse()) fn();
    requestDraw();
  }

  attachPointer(
    overlay,
    {
      layout: () => layout,
      view: () => camera.view,
      moveView,
      zoomBy,
      hitTest,
      click,
      undoClick,
      setPointer: (p) => {
        pointer = p;
      },
      setKeyboardMode: (on) => {
        keyboardMode = on;
      },
      focusVisible: () => {
        keyboardMode = true;
        if (focused === null && order.length > 0) focused = order[0];
      },
      focusedRect: () => (focused === null ? null : grid.tileClientRect(focused)),
      moveFocus: (dCol, dRow) => {
        const next = stepFocus(scene(), focused, dCol, dRow);
        if (next !== null) focusTile(next);
      },
      activateFocused,
      redraw: requestDraw,
    },
    signal,
  );

  let lastWidth = -1;
  // Re-layout in the next frame, not in the callback: resizing there would re-trigger the observer
  // ("ResizeObserver loop completed with undelivered notifications").
  const resizeObserver = new ResizeObserver(() => {
    if (element.clientWidth !== lastWidth) {
      lastWidth = element.clientWidth;
      frames.request("layout");
    }
  });
  resizeObserver.observe(element);

  const grid: Grid = {
    element,
    canvas: overlay,
    get backend() {
      return surface.renderer.kind;
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
        surface.renderer.setValues(d);
      } catch (e) {
        // Beyond the GPU's texture limits (a very wide map): Canvas 2D has no such limit.
        if (surface.renderer.kind !== "webgl2") throw e;
        surface.fallBack(e as Error);
      }
      computeRanges();
      computeOrder();
      drawnPending = d.layer;
      relayout();
      requestDraw();
    },
    setOptions(o: Partial<GridOptions>): void {
      Object.assign(opts, o);
      if (o.colormap !== undefined) surface.renderer.setColormap(colormapLUT(opts.colormap), NAN_COLOR);
      if (o.scope !== undefined || o.symmetric !== undefined || o.globalRange !== undefined) computeRanges();
      if (o.order !== undefined) computeOrder();
      if (o.order !== undefined || o.maxHeight !== undefined) relayout();
      requestDraw();
    },
    resize: relayout,
    resetView(): void {
      if (layout === null) return;
      camera.reset();
      requestDraw();
    },
    getView,
    setView(v: ViewState): void {
      if (camera.set(v, layout)) requestDraw();
    },
    onViewChange: (cb) => void viewCbs.push(cb),
    visibleTiles,
    setFullRes(tiles: FullResTiles | null): void {
      if (data === null) return;
      fullSlot = slotsOf(tiles, data);
      full = tiles;
      surface.renderer.setFullRes(tiles);
      requestDraw();
    },
    zoomBy,
    hitTest,
    tileClientRect: (channel) => tileClientRectOf(scene(), overlay, channel),
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
      frames.stop();
      // Listeners go first: losing the GL context below must not trigger the Canvas 2D fallback.
      listeners.abort();
      resizeObserver.disconnect();
      surface.destroy();
      clickCbs.length = hoverCbs.length = drawnCbs.length = viewCbs.length = 0;
      data = null;
    },
  };
  return grid;
}
