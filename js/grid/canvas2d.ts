/**
 * Canvas 2D backend, used when WebGL2 is missing or its context is lost. It colours every channel once
 * into an atlas canvas at native resolution (through a 256-entry colour table per channel, the same
 * mapping the WebGL2 shader computes) and then draws the visible tiles from it with nearest sampling.
 * Full-resolution maps of some channels get an atlas of their own and are drawn over their tiles.
 *
 * @example
 *   const r = new Canvas2DRenderer(canvas);
 *   r.setValues(layer); r.setRanges(ranges); r.setColormap(colormapLUT("gray"), NAN_COLOR);
 *   r.setOrder(order); r.draw(layout, view, devicePixelRatio);
 */
import { dequantize, toUnit } from "../scale";
import {
  type FullResTiles,
  type LayerValues,
  type Layout,
  type Renderer,
  tileOrigin,
  tilesOf,
  type View,
  visibleCells,
} from "./layout";

/** Colours channel maps into an atlas canvas, `columns` maps per row; map i shows channel `channelOf(i)` (its colour range). */
function paintMaps(
  atlas: HTMLCanvasElement,
  maps: LayerValues,
  columns: number,
  channelOf: (i: number) => number,
  ranges: Float32Array,
  lut: Uint8Array,
  nan: readonly number[],
): void {
  const { channels, height, width, values } = maps;
  const rows = Math.ceil(channels / columns);
  atlas.width = columns * width;
  atlas.height = rows * height;
  const actx = atlas.getContext("2d");
  if (actx === null) throw new Error("grid: the Canvas 2D fallback could not create its atlas");
  const image = actx.createImageData(atlas.width, atlas.height);
  const out = new Uint32Array(image.data.buffer);
  const lut32 = new Uint32Array(lut.buffer.slice(lut.byteOffset, lut.byteOffset + 1024));
  const nanBytes = new Uint8Array(nan.slice(0, 4));
  const nan32 = new Uint32Array(nanBytes.buffer)[0];
  const table = new Uint32Array(256);
  const plane = height * width;
  for (let i = 0; i < channels; i++) {
    const c = channelOf(i);
    const [qmin, qmax, lo, hi] = ranges.subarray(4 * c, 4 * c + 4);
    for (let q = 0; q < 255; q++) {
      table[q] = lut32[Math.floor(toUnit(dequantize(q, qmin, qmax), lo, hi) * 255 + 0.5)];
    }
    table[255] = nan32;
    const ox = (i % columns) * width;
    const oy = Math.floor(i / columns) * height;
    for (let y = 0; y < height; y++) {
      const src = i * plane + y * width;
      const dst = (oy + y) * atlas.width + ox;
      for (let x = 0; x < width; x++) out[dst + x] = table[values[src + x]];
    }
  }
  actx.putImageData(image, 0, 0);
}

export class Canvas2DRenderer implements Renderer {
  readonly kind = "canvas2d";
  private readonly ctx: CanvasRenderingContext2D;
  private readonly atlas: HTMLCanvasElement;
  private readonly fullAtlas: HTMLCanvasElement;
  private full: FullResTiles | null = null;
  private fullColumns = 1;
  private fullDirty = true;
  private layer: LayerValues | null = null;
  private ranges: Float32Array | null = null;
  private lut: Uint8Array | null = null;
  private nan: readonly number[] = [255, 0, 255, 255];
  private order: Int32Array = new Int32Array(0);
  private atlasColumns = 1;
  private dirty = true;

  /** Throws only if the canvas already holds another kind of context. */
  constructor(readonly canvas: HTMLCanvasElement) {
    const ctx = canvas.getContext("2d");
    if (ctx === null) throw new Error("grid: this canvas cannot provide a 2D context");
    this.ctx = ctx;
    this.atlas = document.createElement("canvas");
    this.fullAtlas = document.createElement("canvas");
  }

  setValues(layer: LayerValues): void {
    if (layer.values.length !== layer.channels * layer.height * layer.width) {
      throw new Error(
        `grid: layer values hold ${layer.values.length} bytes, expected ${layer.channels}×${layer.height}×${layer.width}`,
      );
    }
    this.layer = layer;
    this.dirty = true;
    this.full = null;
  }

  setFullRes(tiles: FullResTiles | null): void {
    if (tiles !== null && tiles.values.length !== tiles.channels.length * tiles.height * tiles.width) {
      throw new Error(
        `grid: full-resolution tiles hold ${tiles.values.length} bytes, expected ${tiles.channels.length}×${tiles.height}×${tiles.width}`,
      );
    }
    this.full = tiles;
    this.fullDirty = true;
  }

  setRanges(ranges: Float32Array): void {
    this.ranges = ranges;
    this.dirty = this.fullDirty = true;
  }

  setColormap(lut: Uint8Array, nanColor: readonly number[]): void {
    this.lut = lut;
    this.nan = nanColor;
    this.dirty = this.fullDirty = true;
  }

  setOrder(order: Int32Array): void {
    this.order = order;
  }

  /** Re-colours the atlas: one colour table per channel, then one table look-up per value. */
  private paintAtlas(layer: LayerValues, ranges: Float32Array, lut: Uint8Array): void {
    this.atlasColumns = Math.max(1, Math.ceil(Math.sqrt((layer.channels * layer.height) / layer.width)));
    paintMaps(this.atlas, layer, this.atlasColumns, (i) => i, ranges, lut, this.nan);
  }

  draw(layout: Layout, view: View, dpr: number): void {
    const ctx = this.ctx;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
    const { layer, ranges, lut } = this;
    if (layer === null || ranges === null || lut === null) return;
    if (this.dirty) {
      this.paintAtlas(layer, ranges, lut);
      this.dirty = false;
    }
    ctx.imageSmoothingEnabled = false;
    const { c0, c1, r0, r1 } = visibleCells(layout, view);
    const n = Math.min(this.order.length, layout.count);
    const { width, height } = layer;
    const s = view.k * dpr;
    for (let r = r0; r <= r1; r++) {
      for (let col = c0; col <= c1; col++) {
        const i = r * layout.columns + col;
        if (i >= n) break;
        const channel = this.order[i];
        const [wx, wy] = tileOrigin(layout, i);
        // Whole device pixels, as the rasterizer covers pixel centres: no half-covered, blended edges.
        const x0 = Math.round(wx * s + view.x * dpr);
        const y0 = Math.round(wy * s + view.y * dpr);
        const x1 = Math.round((wx + layout.tileWidth) * s + view.x * dpr);
        const y1 = Math.round((wy + layout.tileHeight) * s + view.y * dpr);
        const sx = (channel % this.atlasColumns) * width;
        const sy = Math.floor(channel / this.atlasColumns) * height;
        ctx.drawImage(this.atlas, sx, sy, width, height, x0, y0, x1 - x0, y1 - y0);
      }
    }
    const full = this.full;
    if (full === null || full.channels.length === 0) return;
    if (this.fullDirty) {
      const maps = { channels: full.channels.length, height: full.height, width: full.width, values: full.values };
      this.fullColumns = Math.max(1, Math.ceil(Math.sqrt(full.channels.length)));
      paintMaps(this.fullAtlas, maps, this.fullColumns, (i) => full.channels[i], ranges, lut, this.nan);
      this.fullDirty = false;
    }
    tilesOf(full.channels, this.order).forEach((i, slot) => {
      if (i < 0 || i >= n) return;
      const [wx, wy] = tileOrigin(layout, i);
      const x0 = Math.round(wx * s + view.x * dpr);
      const y0 = Math.round(wy * s + view.y * dpr);
      const x1 = Math.round((wx + layout.tileWidth) * s + view.x * dpr);
      const y1 = Math.round((wy + layout.tileHeight) * s + view.y * dpr);
      if (x1 < 0 || y1 < 0 || x0 > this.canvas.width || y0 > this.canvas.height) return;
      const sx = (slot % this.fullColumns) * full.width;
      const sy = Math.floor(slot / this.fullColumns) * full.height;
      ctx.drawImage(this.fullAtlas, sx, sy, full.width, full.height, x0, y0, x1 - x0, y1 - y0);
    });
  }

  destroy(): void {
    this.atlas.width = 0;
    this.atlas.height = 0;
    this.fullAtlas.width = 0;
    this.fullAtlas.height = 0;
    this.full = null;
    this.layer = null;
    this.ranges = null;
  }
}
