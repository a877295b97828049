/**
 * What is where on the grid under a view: the tile and data pixel under a point (with its value, from
 * the full-resolution map where one is drawn), the tiles on screen, a tile's rectangle, and the zoom and
 * pan in the grid-size-independent form of the `view` trait. Pure functions of the grid's scene.
 *
 * @example
 *   const hit = pickAt(scene, 40, 12); // { channel, row, col, value, tileIndex, downsample } or null
 */
import { statOf } from "../protocol";
import { dequantize } from "../scale";
import type { HitInfo, LayerData, ViewState, VisibleTiles } from "./grid";
import {
  clampView,
  type FullResTiles,
  hitTestLayout,
  type Layout,
  tileOrigin,
  type View,
  visibleCells,
} from "./layout";

/** What the grid shows: its layout (null before the first one), view, layer and tile order. */
export interface Scene {
  layout: Layout | null;
  view: View;
  data: LayerData | null;
  order: Int32Array;
  full: FullResTiles | null;
  /** Channel → index in `full`. */
  fullSlot: ReadonlyMap<number, number>;
}

/** The dequantized value of a stored pixel (NaN for non-finite). */
export function valueAt(d: LayerData, channel: number, row: number, col: number): number {
  const q = d.values[(channel * d.height + row) * d.width + col];
  return dequantize(q, statOf(d.stats, channel, "min"), statOf(d.stats, channel, "max"));
}

/** The tile and pixel at (sx, sy) CSS px of the canvas, or null off the tiles. */
export function pickAt(s: Scene, sx: number, sy: number): HitInfo | null {
  const { layout, view, data, full } = s;
  if (layout === null || data === null) return null;
  const hit = hitTestLayout(layout, view, sx, sy);
  if (hit === null) return null;
  const channel = s.order[hit.tileIndex];
  const slot = s.fullSlot.get(channel);
  if (full !== null && slot !== undefined) {
    // Inside this tile the full-resolution map is drawn: the pixel is one of its pixels.
    const [tx, ty] = tileOrigin(layout, hit.tileIndex);
    const lx = (sx - view.x) / view.k - tx;
    const ly = (sy - view.y) / view.k - ty;
    const row = Math.min(full.height - 1, Math.max(0, Math.floor((ly / layout.tileHeight) * full.height)));
    const col = Math.min(full.width - 1, Math.max(0, Math.floor((lx / layout.tileWidth) * full.width)));
    const q = full.values[(slot * full.height + row) * full.width + col];
    const value = dequantize(q, statOf(data.stats, channel, "min"), statOf(data.stats, channel, "max"));
    return { channel, row, col, value, tileIndex: hit.tileIndex, downsample: 1 };
  }
  const value = valueAt(data, channel, hit.row, hit.col);
  return { channel, row: hit.row, col: hit.col, value, tileIndex: hit.tileIndex, downsample: data.downsample };
}

/** Whether two hits are the same data pixel (both null counts). */
export function samePixel(a: HitInfo | null, b: HitInfo | null): boolean {
  return a === b || (a !== null && b !== null && a.channel === b.channel && a.row === b.row && a.col === b.col);
}

/** A tile activated from the keyboard: its first pixel; null when the channel has no tile. */
export function tileHit(s: Scene, channel: number): HitInfo | null {
  const { data } = s;
  if (data === null || channel >= data.channels) return null;
  const tileIndex = s.order.indexOf(channel);
  if (tileIndex < 0) return null;
  const downsample = s.fullSlot.has(channel) ? 1 : data.downsample;
  return { channel, row: 0, col: 0, value: valueAt(data, channel, 0, 0), tileIndex, downsample };
}

/** Channel → index in full-resolution tiles, checked against the layer (empty for none). */
export function slotsOf(tiles: FullResTiles | null, data: LayerData): Map<number, number> {
  const slots = new Map<number, number>();
  if (tiles === null) return slots;
  if (tiles.channels.some((c) => !(c >= 0 && c < data.channels))) {
    const list = tiles.channels.join(", ");
    throw new Error(`grid: full-resolution tiles for channels ${list}; layer "${data.layer}" has ${data.channels}`);
  }
  tiles.channels.forEach((c, slot) => {
    slots.set(c, slot);
  });
  return slots;
}

/** The channels whose tiles are at least partly on screen, and CSS px per stored pixel. */
export function visibleTilesOf(s: Scene): VisibleTiles {
  const { layout, view, order } = s;
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

/** A channel's tile rectangle in canvas CSS px under the view, or null when it is not shown. */
export function tileRectOf(s: Scene, channel: number): { x: number; y: number; w: number; h: number } | null {
  const { layout, view } = s;
  if (layout === null) return null;
  const i = s.order.indexOf(channel);
  if (i < 0 || i >= layout.count) return null;
  const [wx, wy] = tileOrigin(layout, i);
  return {
    x: wx * view.k + view.x,
    y: wy * view.k + view.y,
    w: layout.tileWidth * view.k,
    h: layout.tileHeight * view.k,
  };
}

/** A channel's tile rectangle in client coordinates, or null when it is not shown. */
export function tileClientRectOf(s: Scene, canvas: HTMLCanvasElement, channel: number): DOMRect | null {
  const r = tileRectOf(s, channel);
  if (r === null) return null;
  const rect = canvas.getBoundingClientRect();
  return new DOMRect(rect.left + r.x, rect.top + r.y, r.w, r.h);
}

/** The channel the focus moves to by (dCol, dRow) cells from `focused` (the first tile when none). */
export function stepFocus(s: Scene, focused: number | null, dCol: number, dRow: number): number | null {
  const { layout, order } = s;
  if (layout === null || order.length === 0) return null;
  let i = focused === null ? -1 : order.indexOf(focused);
  if (i < 0) return order[0];
  const col = Math.min(layout.columns - 1, Math.max(0, (i % layout.columns) + dCol));
  const row = Math.min(layout.rows - 1, Math.max(0, Math.floor(i / layout.columns) + dRow));
  i = Math.min(order.length - 1, row * layout.columns + col);
  return order[i];
}

/** The view as zoom and the visible centre in fractions of the grid's size. */
export function toViewState(view: View, layout: Layout): ViewState {
  const { viewportWidth: w, viewportHeight: h } = layout;
  return {
    zoom: view.k,
    x: w > 0 ? (w / 2 - view.x) / view.k / w : 0.5,
    y: h > 0 ? (h / 2 - view.y) / view.k / h : 0.5,
  };
}

/** A `view` trait value as a view of this layout (clamped to the grid). */
export function fromViewState(v: ViewState, layout: Layout): View {
  const { viewportWidth: w, viewportHeight: h } = layout;
  return clampView({ k: v.zoom, x: w / 2 - v.zoom * v.x * w, y: h / 2 - v.zoom * v.y * h }, layout);
}
