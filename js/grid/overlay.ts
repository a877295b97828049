/**
 * The 2D layer drawn over the picture: channel numbers, badges, dead- and constant-channel marks, selection, ablation
 * and focus outlines, and the value of each pixel once pixels are large enough to hold it. Only visible tiles are
 * visited, so 2048 tiles cost nothing while their labels are too small to draw.
 *
 * @example
 *   drawOverlay(ctx, { layout, view, dpr, order, layer, ranges, lut, theme, selected, ablated, focused, badges, full: null });
 */
import { FLAG_CONSTANT, FLAG_DATASET_DEAD, FLAG_DEAD } from "../protocol";
import { dequantize, formatValue, toUnit } from "../scale";
import type { ThemeColors } from "../theme";
import { type FullResTiles, type Layout, tileOrigin, VALUE_LABEL_MIN_PX, type View, visibleCells } from "./layout";

/** The quantized layer as the overlay needs it. */
export interface OverlayLayer {
  height: number;
  width: number;
  values: Uint8Array;
  flags: Uint8Array;
}

export interface OverlayState {
  layout: Layout;
  view: View;
  dpr: number;
  order: Int32Array;
  layer: OverlayLayer;
  /** Per channel [qmin, qmax, lo, hi], as given to the renderer. */
  ranges: Float32Array;
  lut: Uint8Array;
  theme: ThemeColors;
  selected: ReadonlySet<number>;
  /** Channels zeroed by the last ablation: a dashed outline and, on large tiles, a "zeroed" tag. */
  ablated: ReadonlySet<number>;
  focused: number | null;
  badges: Float32Array | null;
  /** Full-resolution maps drawn over some tiles (their values are printed at full resolution). */
  full: FullResTiles | null;
}

/** One channel's quantized map: `values[base + row * width + col]`. */
interface MapSource {
  values: Uint8Array;
  width: number;
  height: number;
  base: number;
}

/**
 * Tile labels (channel number, badges, tags) scale with the tile on screen: their font is this fraction of
 * the tile's width, at most LABEL_MAX_FONT_PX, and below LABEL_MIN_FONT_PX they are not drawn at all (an
 * unreadable label only covers the map; zooming in brings them back). A label is also dropped when it would
 * take more than LABEL_MAX_SHARE of the tile's width.
 */
const LABEL_FONT_SHARE = 1 / 5;
const LABEL_MAX_FONT_PX = 11;
export const LABEL_MIN_FONT_PX = 8;
const LABEL_MAX_SHARE = 0.5;

/** The label font size (CSS px) for a tile `tw` CSS px wide on screen; 0: no labels. */
export function labelFontPx(tw: number): number {
  const size = Math.min(LABEL_MAX_FONT_PX, Math.floor(tw * LABEL_FONT_SHARE));
  return size >= LABEL_MIN_FONT_PX ? size : 0;
}

function roundRect(ctx: CanvasRenderingContext2D, x: number, y: number, w: number, h: number): void {
  ctx.beginPath();
  ctx.roundRect(x, y, w, h, 2);
  ctx.fill();
}

/** A tag's box for the current font of `size` px: width and height. */
function tagSize(ctx: CanvasRenderingContext2D, text: string, size: number): [number, number] {
  return [ctx.measureText(text).width + Math.ceil(size / 2), size + 2];
}

/** Draws a small text tag in the current font of `size` px; returns its width. */
function tag(
  ctx: CanvasRenderingContext2D,
  text: string,
  x: number,
  y: number,
  alignRight: boolean,
  size: number,
  theme: ThemeColors,
): number {
  const [w, h] = tagSize(ctx, text, size);
  const left = alignRight ? x - w : x;
  ctx.globalAlpha = 0.75;
  ctx.fillStyle = theme.bg;
  roundRect(ctx, left, y, w, h);
  ctx.globalAlpha = 1;
  ctx.fillStyle = theme.label;
  ctx.fillText(text, left + Math.ceil(size / 4), y + size - 1);
  return w;
}

/** A flat line across the middle of a tile, over a halo so it shows on any map: a constant channel. */
function flatMark(
  ctx: CanvasRenderingContext2D,
  x0: number,
  y0: number,
  w: number,
  h: number,
  theme: ThemeColors,
): void {
  const y = y0 + h / 2;
  const inset = w * 0.15;
  for (const [color, width] of [
    [theme.bg, 4],
    [theme.warn, 2],
  ] as const) {
    ctx.strokeStyle = color;
    ctx.lineWidth = width;
    ctx.beginPath();
    ctx.moveTo(x0 + inset, y);
    ctx.lineTo(x0 + w - inset, y);
    ctx.stroke();
  }
}

function drawValues(
  ctx: CanvasRenderingContext2D,
  s: OverlayState,
  channel: number,
  map: MapSource,
  x0: number,
  y0: number,
  px: number,
  py: number,
): void {
  const { layout, ranges, lut, theme } = s;
  const { width, height, values, base } = map;
  const cx0 = Math.max(0, Math.floor(-x0 / px));
  const cx1 = Math.min(width - 1, Math.floor((layout.viewportWidth - x0) / px));
  const cy0 = Math.max(0, Math.floor(-y0 / py));
  const cy1 = Math.min(height - 1, Math.floor((layout.viewportHeight - y0) / py));
  if (cx0 > cx1 || cy0 > cy1) return;
  const [qmin, qmax, lo, hi] = ranges.subarray(4 * channel, 4 * channel + 4);
  const size = Math.min(14, Math.max(8, Math.floor(Math.min(px, py) / 3.2)));
  ctx.font = `${size}px ${theme.mono}`;
  ctx.textAlign = "center";
  ctx.textBaseline = "middle";
  for (let r = cy0; r <= cy1; r++) {
    for (let c = cx0; c <= cx1; c++) {
      const q = values[base + r * width + c];
      const v = dequantize(q, qmin, qmax);
      const text = formatValue(v);
      if (ctx.measureText(text).width > px - 2) continue;
      // Dark text on light pixels and the reverse, judged from the colour the pixel is drawn in.
      let light = false;
      if (q !== 255) {
        const i = 4 * Math.floor(toUnit(v, lo, hi) * 255 + 0.5);
        light = 0.299 * lut[i] + 0.587 * lut[i + 1] + 0.114 * lut[i + 2] > 140;
      }
      ctx.fillStyle = light ? "#000" : "#fff";
      ctx.fillText(text, x0 + (c + 0.5) * px, y0 + (r + 0.5) * py);
    }
  }
  ctx.textAlign = "left";
  ctx.textBaseline = "alphabetic";
}

/** Diagonal stripes over a tile, clipped to it, and a solid border: a channel dead across the dataset. */
function hatch(ctx: CanvasRenderingContext2D, x0: number, y0: number, w: number, h: number, color: string): void {
  ctx.save();
  ctx.beginPath();
  ctx.rect(x0, y0, w, h);
  ctx.clip();
  ctx.strokeStyle = color;
  ctx.globalAlpha = 0.55;
  ctx.lineWidth = 1;
  const gap = Math.max(4, Math.min(8, w / 6));
  ctx.beginPath();
  for (let d = -h; d < w; d += gap) {
    ctx.moveTo(x0 + d, y0 + h);
    ctx.lineTo(x0 + d + h, y0);
  }
  ctx.stroke();
  ctx.globalAlpha = 1;
  ctx.lineWidth = 2;
  ctx.strokeRect(x0 + 1, y0 + 1, w - 2, h - 2);
  ctx.restore();
}

/** Draws the overlay for one frame into a canvas of `round(viewport × dpr)` device px. */
export function drawOverlay(ctx: CanvasRenderingContext2D, s: OverlayState): void {
  const { layout, view, dpr, order, theme } = s;
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.clearRect(0, 0, ctx.canvas.width, ctx.canvas.height);
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  const n = Math.min(order.length, layout.count);
  const tw = layout.tileWidth * view.k;
  const th = layout.tileHeight * view.k;
  const { c0, c1, r0, r1 } = visibleCells(layout, view);
  const fullSlot = new Map<number, number>();
  s.full?.channels.forEach((c, slot) => {
    fullSlot.set(c, slot);
  });
  const full = s.full;
  // The grid's background is the gap colour: the empty cells after the last tile, and the canvas beyond
  // the tiles (a grid narrower than the canvas under a height limit), get the page's instead.
  ctx.fillStyle = theme.bg;
  const far = 2 * (layout.viewportWidth + layout.viewportHeight) * view.k;
  const right = (layout.columns * layout.cellWidth - layout.gap) * view.k + view.x;
  const below = (layout.rows * layout.cellHeight - layout.gap) * view.k + view.y;
  ctx.fillRect(right, 0, far, far);
  ctx.fillRect(0, below, far, far);
  if (n % layout.columns !== 0) {
    // From the gap before the first empty cell on.
    const [wx, wy] = tileOrigin(layout, n);
    ctx.fillRect((wx - layout.gap) * view.k + view.x, (wy - layout.gap) * view.k + view.y, far, far);
  }
  for (let r = r0; r <= r1; r++) {
    for (let col = c0; col <= c1; col++) {
      const i = r * layout.columns + col;
      if (i >= n) break;
      const channel = order[i];
      const [wx, wy] = tileOrigin(layout, i);
      const x0 = wx * view.k + view.x;
      const y0 = wy * view.k + view.y;
      const slot = fullSlot.get(channel);
      const { height, width, values } = s.layer;
      const map: MapSource =
        full !== null && slot !== undefined
          ? { values: full.values, width: full.width, height: full.height, base: slot * full.width * full.height }
          : { values, width, height, base: channel * width * height };
      // A full-resolution map may not be an exact multiple of the pooled one: each axis has its own pitch.
      const px = tw / map.width;
      const py = th / map.height;
      if (Math.min(px, py) >= VALUE_LABEL_MIN_PX) drawValues(ctx, s, channel, map, x0, y0, px, py);
      const flags = s.layer.flags[channel];
      if ((flags & FLAG_DATASET_DEAD) !== 0) {
        // Dead across the whole dataset, not just this batch: hatched, with a "never > 0" tag on larger tiles.
        hatch(ctx, x0, y0, tw, th, theme.error);
      } else if ((flags & FLAG_DEAD) !== 0) {
        ctx.strokeStyle = theme.error;
        ctx.lineWidth = 1.5;
        ctx.beginPath();
        ctx.moveTo(x0, y0);
        ctx.lineTo(x0 + tw, y0 + th);
        ctx.moveTo(x0 + tw, y0);
        ctx.lineTo(x0, y0 + th);
        ctx.stroke();
      }
      if ((flags & FLAG_CONSTANT) !== 0 && (flags & (FLAG_DEAD | FLAG_DATASET_DEAD)) === 0)
        flatMark(ctx, x0, y0, tw, th, theme);
      // Labels: top-left the channel number, top-right (or bottom-right) the badge, bottom-left a tag.
      const size = labelFontPx(Math.min(tw, th * 1.5));
      const fitsTile = (text: string): boolean => size > 0 && tagSize(ctx, text, size)[0] <= tw * LABEL_MAX_SHARE;
      if (size > 0) ctx.font = `${size}px ${theme.font}`;
      const top = Math.max(0, y0) + 1;
      const bottom = Math.min(layout.viewportHeight, y0 + th) - size - 3;
      const label = fitsTile(String(channel))
        ? tag(ctx, String(channel), Math.max(0, x0) + 1, top, false, size, theme)
        : 0;
      const bottomTag =
        (flags & FLAG_DATASET_DEAD) !== 0
          ? "never > 0"
          : s.ablated.has(channel)
            ? "zeroed"
            : (flags & FLAG_CONSTANT) !== 0 && (flags & FLAG_DEAD) === 0
              ? "constant"
              : "";
      if (bottomTag !== "" && fitsTile(bottomTag) && th >= 3 * (size + 2))
        tag(ctx, bottomTag, Math.max(0, x0) + 1, bottom, false, size, theme);
      if (s.badges !== null && channel < s.badges.length) {
        const text = formatValue(s.badges[channel]);
        // Top-right beside the channel number when both fit; otherwise the bottom-right corner.
        const [w] = size > 0 ? tagSize(ctx, text, size) : [Infinity];
        const fits = label + w + 4 <= tw;
        const y = fits ? top : bottom;
        if (w <= tw * 0.6 && (fits || th >= 2 * (size + 2)))
          tag(ctx, text, Math.min(layout.viewportWidth, x0 + tw) - 1, y, true, size, theme);
      }
      if (s.selected.has(channel)) {
        ctx.strokeStyle = theme.accent;
        ctx.lineWidth = 2;
        ctx.strokeRect(x0 + 1, y0 + 1, tw - 2, th - 2);
      }
      if (s.ablated.has(channel)) {
        ctx.strokeStyle = theme.warn;
        ctx.lineWidth = 2;
        ctx.setLineDash([5, 3]);
        ctx.strokeRect(x0 + 3, y0 + 3, tw - 6, th - 6);
        ctx.setLineDash([]);
      }
      if (s.focused === channel) {
        ctx.strokeStyle = theme.label;
        ctx.lineWidth = 1.5;
        ctx.setLineDash([3, 2]);
        ctx.strokeRect(x0 - 0.75, y0 - 0.75, tw + 1.5, th + 1.5);
        ctx.setLineDash([]);
      }
    }
  }
}
