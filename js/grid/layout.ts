/**
 * Grid geometry shared by both renderers, the overlay and hit testing: where each tile sits at zoom 1
 * ("world" CSS px), and the zoom/pan view that maps world to screen: `screen = k * world + (x, y)`.
 *
 * @example
 *   const layout = computeLayout(64, 56, 56, 800);       // 8 × 8 tiles across 800 CSS px
 *   const view = zoomAround(IDENTITY_VIEW, layout, 2, 100, 100);
 *   hitTestLayout(layout, view, 120, 130);               // { tileIndex, row, col } or null
 */

/** Tiles of one layer laid out in a container, at zoom 1. Lengths are CSS px. */
export interface Layout {
  /** Number of tiles (channels shown). */
  count: number;
  /** Size of one feature map in data pixels (as stored). */
  mapWidth: number;
  mapHeight: number;
  columns: number;
  rows: number;
  /** CSS px per data pixel at zoom 1. */
  scale: number;
  tileWidth: number;
  tileHeight: number;
  gap: number;
  /** Tile plus gap: the pitch of the grid. */
  cellWidth: number;
  cellHeight: number;
  /** Size of the drawing surface (the canvas) in CSS px; the tiles fit inside it at zoom 1. */
  viewportWidth: number;
  viewportHeight: number;
}

/** Zoom `k` and pan `(x, y)` in CSS px: `screen = k * world + (x, y)`. */
export interface View {
  k: number;
  x: number;
  y: number;
}

export const IDENTITY_VIEW: View = Object.freeze({ k: 1, x: 0, y: 0 });

/** A point inside a tile: which tile (index in the drawing order) and which stored data pixel. */
export interface TileHit {
  tileIndex: number;
  row: number;
  col: number;
}

/** On-screen size (CSS px) of a data pixel from which its value is printed inside it. */
export const VALUE_LABEL_MIN_PX = 28;

/** A data pixel grows to at most this many CSS px at the deepest zoom. */
const MAX_PIXEL_PX = 96;

/** Largest gap between tiles (CSS px); tiles under 12 px get 1 px so the gaps do not eat the picture. */
const GAP_PX = 2;

function fitScale(
  count: number,
  columns: number,
  mapW: number,
  mapH: number,
  width: number,
  maxHeight: number,
  gap: number,
): number {
  const rows = Math.ceil(count / columns);
  const sw = (width - (columns - 1) * gap) / (columns * mapW);
  if (maxHeight <= 0) return sw;
  const sh = (maxHeight - (rows - 1) * gap) / (rows * mapH);
  return Math.min(sw, sh);
}

/**
 * Lays out `count` tiles of `mapHeight × mapWidth` pixels across `width` CSS px.
 *
 * Without `maxHeight` the grid is near-square in shape (columns ≈ √(count · mapHeight / mapWidth)) and as
 * tall as it needs to be; with `maxHeight > 0` the column count is the one that makes tiles largest while
 * the whole grid fits `width × maxHeight`.
 *
 * @example
 *   computeLayout(2048, 7, 7, 1000).columns; // 46
 */
export function computeLayout(
  count: number,
  mapHeight: number,
  mapWidth: number,
  width: number,
  maxHeight = 0,
): Layout {
  if (!(count >= 1 && mapHeight >= 1 && mapWidth >= 1)) {
    throw new Error(
      `grid layout: need at least one tile of at least 1×1 pixels, got ${count} tiles of ${mapHeight}×${mapWidth}`,
    );
  }
  const w = Math.max(1, width);
  let columns: number;
  let gap = count > 1 ? GAP_PX : 0;
  if (maxHeight > 0) {
    columns = 1;
    let best = -Infinity;
    for (let c = 1; c <= count; c++) {
      const s = fitScale(count, c, mapWidth, mapHeight, w, maxHeight, gap);
      if (s > best) {
        best = s;
        columns = c;
      }
    }
  } else {
    columns = Math.min(count, Math.max(1, Math.ceil(Math.sqrt((count * mapHeight) / mapWidth))));
  }
  let scale = fitScale(count, columns, mapWidth, mapHeight, w, maxHeight, gap);
  if (gap > 1 && scale * Math.min(mapWidth, mapHeight) < 12) {
    gap = 1;
    scale = fitScale(count, columns, mapWidth, mapHeight, w, maxHeight, gap);
  }
  if (!(scale > 0)) {
    gap = 0;
    scale = fitScale(count, columns, mapWidth, mapHeight, w, maxHeight, gap);
  }
  const rows = Math.ceil(count / columns);
  const tileWidth = scale * mapWidth;
  const tileHeight = scale * mapHeight;
  return {
    count,
    mapWidth,
    mapHeight,
    columns,
    rows,
    scale,
    tileWidth,
    tileHeight,
    gap,
    cellWidth: tileWidth + gap,
    cellHeight: tileHeight + gap,
    viewportWidth: w,
    viewportHeight: Math.ceil(rows * tileHeight + (rows - 1) * gap),
  };
}

/** Top-left corner of a tile in world CSS px. */
export function tileOrigin(layout: Layout, tileIndex: number): [number, number] {
  const col = tileIndex % layout.columns;
  const row = Math.floor(tileIndex / layout.columns);
  return [col * layout.cellWidth, row * layout.cellHeight];
}

/** Deepest zoom: a data pixel reaches MAX_PIXEL_PX CSS px (and at least 2× zoom is always allowed). */
export function maxZoom(layout: Layout): number {
  return Math.max(2, MAX_PIXEL_PX / layout.scale);
}

/**
 * Keeps the zoom within [1, maxZoom] and the pan such that the content always covers the viewport
 * (at zoom 1 that is no pan at all).
 */
export function clampView(view: View, layout: Layout): View {
  const k = Math.min(maxZoom(layout), Math.max(1, view.k));
  const clampAxis = (t: number, viewport: number): number => Math.min(0, Math.max(viewport * (1 - k), t));
  return { k, x: clampAxis(view.x, layout.viewportWidth), y: clampAxis(view.y, layout.viewportHeight) };
}

/**
 * Zooms by `factor` keeping the world point under screen point (sx, sy) in place.
 *
 * @example
 *   zoomAround(view, layout, 1.25, pointerX, pointerY);
 */
export function zoomAround(view: View, layout: Layout, factor: number, sx: number, sy: number): View {
  const k = Math.min(maxZoom(layout), Math.max(1, view.k * factor));
  const wx = (sx - view.x) / view.k;
  const wy = (sy - view.y) / view.k;
  return clampView({ k, x: sx - k * wx, y: sy - k * wy }, layout);
}

/** Moves the view by (dx, dy) screen CSS px. */
export function panBy(view: View, layout: Layout, dx: number, dy: number): View {
  return clampView({ k: view.k, x: view.x + dx, y: view.y + dy }, layout);
}

/**
 * The tile and data pixel under screen point (sx, sy) (CSS px relative to the canvas), or null over a
 * gap or outside the tiles. The exact inverse of the transform the renderers draw with.
 */
export function hitTestLayout(layout: Layout, view: View, sx: number, sy: number): TileHit | null {
  const wx = (sx - view.x) / view.k;
  const wy = (sy - view.y) / view.k;
  const c = Math.floor(wx / layout.cellWidth);
  const r = Math.floor(wy / layout.cellHeight);
  if (c < 0 || r < 0 || c >= layout.columns || r >= layout.rows) return null;
  const lx = wx - c * layout.cellWidth;
  const ly = wy - r * layout.cellHeight;
  if (lx >= layout.tileWidth || ly >= layout.tileHeight) return null;
  const tileIndex = r * layout.columns + c;
  if (tileIndex >= layout.count) return null;
  return {
    tileIndex,
    row: Math.min(layout.mapHeight - 1, Math.floor(ly / layout.scale)),
    col: Math.min(layout.mapWidth - 1, Math.floor(lx / layout.scale)),
  };
}

/** Range of tile rows and columns (inclusive) that intersect the viewport under a view. */
export function visibleCells(layout: Layout, view: View): { c0: number; c1: number; r0: number; r1: number } {
  const wx0 = -view.x / view.k;
  const wy0 = -view.y / view.k;
  const wx1 = (layout.viewportWidth - view.x) / view.k;
  const wy1 = (layout.viewportHeight - view.y) / view.k;
  return {
    c0: Math.max(0, Math.floor(wx0 / layout.cellWidth)),
    c1: Math.min(layout.columns - 1, Math.floor(wx1 / layout.cellWidth)),
    r0: Math.max(0, Math.floor(wy0 / layout.cellHeight)),
    r1: Math.min(layout.rows - 1, Math.floor(wy1 / layout.cellHeight)),
  };
}

/** A view that shows tile `tileIndex` whole, changing the pan only (zoom kept). */
export function revealTile(view: View, layout: Layout, tileIndex: number): View {
  const [wx, wy] = tileOrigin(layout, tileIndex);
  const x0 = view.k * wx + view.x;
  const y0 = view.k * wy + view.y;
  const x1 = x0 + view.k * layout.tileWidth;
  const y1 = y0 + view.k * layout.tileHeight;
  let dx = 0;
  let dy = 0;
  if (x1 > layout.viewportWidth) dx = layout.viewportWidth - x1;
  if (x0 + dx < 0) dx = -x0;
  if (y1 > layout.viewportHeight) dy = layout.viewportHeight - y1;
  if (y0 + dy < 0) dy = -y0;
  return panBy(view, layout, dx, dy);
}

/** The quantized values of one layer as a renderer receives them (protocol.md `layer` reply). */
export interface LayerValues {
  channels: number;
  height: number;
  width: number;
  /** channels × height × width, q = 255 for non-finite values. */
  values: Uint8Array;
}

/**
 * Some channels of a downsampled layer at full resolution (a `layer` reply with `channels`): drawn over
 * their tiles instead of the pooled maps. Quantized like the layer, on the same per-channel ranges.
 */
export interface FullResTiles {
  /** The channels held, in the order of `values`. */
  channels: Int32Array;
  height: number;
  width: number;
  /** channels.length × height × width, q = 255 for non-finite values. */
  values: Uint8Array;
}

/**
 * Where each tile of `channels` sits in the drawing order (−1 when it is not shown).
 *
 * @example
 *   tilesOf(Int32Array.from([5, 2]), Int32Array.from([2, 9, 5])); // Int32Array [2, 0]
 */
export function tilesOf(channels: Int32Array, order: Int32Array): Int32Array {
  const index = new Map<number, number>();
  order.forEach((c, i) => {
    index.set(c, i);
  });
  return channels.map((c) => index.get(c) ?? -1);
}

/**
 * What the grid asks of a backend (WebGL2 or Canvas 2D). Each setter stores one kind of input, so a
 * change of colormap or scale never re-sends the values.
 */
export interface Renderer {
  readonly kind: "webgl2" | "canvas2d";
  setValues(layer: LayerValues): void;
  /** Per channel [qmin, qmax, lo, hi]: the quantization range and the display range. */
  setRanges(ranges: Float32Array): void;
  /** 256 × RGBA colormap lookup table and the colour of non-finite values. */
  setColormap(lut: Uint8Array, nanColor: readonly number[]): void;
  /** Channel drawn in each tile, in tile order. */
  setOrder(order: Int32Array): void;
  /** Full-resolution maps drawn over their channels' tiles (null: none). Cleared by setValues. */
  setFullRes(tiles: FullResTiles | null): void;
  /** Draws all tiles into a drawing buffer of `round(viewport × dpr)` device px. */
  draw(layout: Layout, view: View, dpr: number): void;
  destroy(): void;
}
