import { afterEach, describe, expect, it } from "vitest";
import { colormapLUT, NAN_COLOR } from "../colormaps";
import { Canvas2DRenderer } from "./canvas2d";
import {
  computeLayout,
  IDENTITY_VIEW,
  type LayerValues,
  type Layout,
  type Renderer,
  tileOrigin,
  type View,
} from "./layout";
import { packChannels, WebGLRenderer } from "./webgl";

const made: Renderer[] = [];
afterEach(() => {
  for (const r of made.splice(0)) r.destroy();
});

/** A renderer on a detached canvas sized for `layout` at dpr 1, fed with gray and full-range scales. */
function setup(
  kind: "webgl2" | "canvas2d",
  layer: LayerValues,
  layout: Layout,
  ranges: Float32Array,
  maxArrayLayers?: number,
): Renderer {
  const canvas = document.createElement("canvas");
  canvas.width = layout.viewportWidth;
  canvas.height = layout.viewportHeight;
  const r = kind === "webgl2" ? new WebGLRenderer(canvas, { maxArrayLayers }) : new Canvas2DRenderer(canvas);
  made.push(r);
  r.setValues(layer);
  r.setRanges(ranges);
  r.setColormap(colormapLUT("gray"), NAN_COLOR);
  r.setOrder(Int32Array.from({ length: layer.channels }, (_, i) => i));
  return r;
}

/** Draws and reads the picture back as top-down RGBA rows. */
function drawAndRead(
  r: Renderer,
  layout: Layout,
  view: View = IDENTITY_VIEW,
): { rgba: Uint8Array; width: number; height: number } {
  r.draw(layout, view, 1);
  const [width, height] = [layout.viewportWidth, layout.viewportHeight];
  if (r instanceof WebGLRenderer) {
    const gl = r.gl;
    const bottomUp = new Uint8Array(width * height * 4);
    gl.readPixels(0, 0, width, height, gl.RGBA, gl.UNSIGNED_BYTE, bottomUp);
    const rgba = new Uint8Array(width * height * 4);
    for (let y = 0; y < height; y++)
      rgba.set(bottomUp.subarray((height - 1 - y) * width * 4, (height - y) * width * 4), y * width * 4);
    return { rgba, width, height };
  }
  const ctx = (r as Canvas2DRenderer).canvas.getContext("2d")!;
  return { rgba: new Uint8Array(ctx.getImageData(0, 0, width, height).data.buffer), width, height };
}

/** Per channel [qmin, qmax, lo, hi] = [0, 254, 0, 254]: the value is q itself, drawn on 0..254. */
function identityRanges(channels: number): Float32Array {
  const r = new Float32Array(4 * channels);
  for (let c = 0; c < channels; c++) r.set([0, 254, 0, 254], 4 * c);
  return r;
}

/** The gray level the shader gives to q under identityRanges. */
const grayOf = (q: number): number => Math.floor((q / 254) * 255 + 0.5);

describe("packChannels", () => {
  it("uses one array layer per channel when the device allows", () => {
    expect(packChannels(64, 56, 56, 2048, 8192)).toMatchObject({
      slotsPerLayer: 1,
      layers: 64,
      texWidth: 56,
      texHeight: 56,
    });
  });
  it("packs several channels per layer beyond the array-layer limit", () => {
    const p = packChannels(2048, 7, 7, 256, 4096);
    expect(p.slotsPerLayer).toBeGreaterThanOrEqual(8);
    expect(p.layers).toBeLessThanOrEqual(256);
    expect(p.layers * p.slotsPerLayer).toBeGreaterThanOrEqual(2048);
    expect(p.texWidth).toBe(p.slotsX * 7);
  });
  it("names the shape and the limit when a map cannot fit", () => {
    expect(() => packChannels(1, 9000, 10, 256, 8192)).toThrow(/9000×10.*8192/);
  });
});

describe("WebGL2 renderer", () => {
  it("draws each channel's brightest pixel where the layout puts it, in the top colour", () => {
    const [C, H, W] = [3, 8, 8];
    const values = new Uint8Array(C * H * W);
    const peaks = [
      [1, 2],
      [6, 5],
      [7, 0],
    ];
    peaks.forEach(([row, col], c) => {
      values[c * H * W + row * W + col] = 254;
    });
    const layout = computeLayout(C, H, W, 2 * 80 + 2); // 2 columns of 80 px tiles: 10 px per data pixel
    expect(layout.scale).toBe(10);
    const r = setup("webgl2", { channels: C, height: H, width: W, values }, layout, identityRanges(C));
    for (const view of [IDENTITY_VIEW, { k: 2, x: -30, y: -20 }]) {
      const { rgba, width, height } = drawAndRead(r, layout, view);
      peaks.forEach(([row, col], c) => {
        const [ox, oy] = tileOrigin(layout, c);
        // Centre of the peak pixel on screen, where it must be white, and just outside it, black.
        const sx = Math.floor(view.k * (ox + (col + 0.5) * 10) + view.x);
        const sy = Math.floor(view.k * (oy + (row + 0.5) * 10) + view.y);
        if (sx < 0 || sy < 0 || sx >= width || sy >= height) return;
        const at = (x: number, y: number): number[] =>
          Array.from(rgba.subarray(4 * (y * width + x), 4 * (y * width + x) + 4));
        expect(at(sx, sy)).toEqual([255, 255, 255, 255]);
        const nx = sx + (col < W - 1 ? 1 : -1) * 10 * view.k;
        if (nx >= 0 && nx < width) expect(at(nx, sy)).toEqual([0, 0, 0, 255]);
      });
    }
  });

  it("draws q = 255 in the NaN colour and maps values through the channel's ranges", () => {
    const values = Uint8Array.from([0, 127, 254, 255]);
    const layout = computeLayout(1, 1, 4, 40);
    // v = -1 + q/254 * 2, shown on [-1, 1]: q 127 is v = 0, the middle gray.
    const r = setup("webgl2", { channels: 1, height: 1, width: 4, values }, layout, Float32Array.from([-1, 1, -1, 1]));
    const { rgba, width } = drawAndRead(r, layout);
    const px = (x: number): number[] => Array.from(rgba.subarray(4 * (5 * width + x), 4 * (5 * width + x) + 4));
    expect(px(5)).toEqual([0, 0, 0, 255]);
    expect(px(15)).toEqual([128, 128, 128, 255]);
    expect(px(25)).toEqual([255, 255, 255, 255]);
    expect(px(35)).toEqual([...NAN_COLOR]);
  });

  it.each([undefined, 64])("renders all 2048 channels (array layer cap %s)", (maxArrayLayers) => {
    const [C, H, W] = [2048, 4, 4];
    const values = new Uint8Array(C * H * W);
    for (let c = 0; c < C; c++) values.fill((c * 37) % 255, c * H * W, (c + 1) * H * W);
    const layout = computeLayout(C, H, W, 46 * 16 + 45);
    const r = setup("webgl2", { channels: C, height: H, width: W, values }, layout, identityRanges(C), maxArrayLayers);
    const packing = (r as WebGLRenderer).currentPacking!;
    if (maxArrayLayers !== undefined) expect(packing.layers).toBeLessThanOrEqual(maxArrayLayers);
    const { rgba, width } = drawAndRead(r, layout);
    let wrong = 0;
    for (let c = 0; c < C; c++) {
      const [ox, oy] = tileOrigin(layout, c);
      const i = 4 * (Math.floor(oy + layout.tileHeight / 2) * width + Math.floor(ox + layout.tileWidth / 2));
      const q = (c * 37) % 255;
      const want = q === 255 ? NAN_COLOR[0] : grayOf(q);
      if (rgba[i] !== want || rgba[i + 3] !== 255) wrong++;
    }
    expect(wrong).toBe(0);
  });

  it("matches the Canvas 2D fallback pixel for pixel (within one colormap step)", () => {
    const [C, H, W] = [5, 6, 6];
    const values = new Uint8Array(C * H * W);
    for (let i = 0; i < values.length; i++) values[i] = (i * 97) % 256;
    const ranges = new Float32Array(4 * C);
    for (let c = 0; c < C; c++) ranges.set([-2 + c, 3 + c, -4, 6], 4 * c);
    const layout = computeLayout(C, H, W, 3 * 48 + 2 * 2); // 8 px per data pixel
    const lut = colormapLUT("viridis");
    const gl = setup("webgl2", { channels: C, height: H, width: W, values }, layout, ranges);
    const c2d = setup("canvas2d", { channels: C, height: H, width: W, values }, layout, ranges);
    gl.setColormap(lut, NAN_COLOR);
    c2d.setColormap(lut, NAN_COLOR);
    const order = Int32Array.from([4, 0, 3, 1, 2]);
    gl.setOrder(order);
    c2d.setOrder(order);
    for (const view of [IDENTITY_VIEW, { k: 2, x: -16, y: -8 }]) {
      const a = drawAndRead(gl, layout, view).rgba;
      const b = drawAndRead(c2d, layout, view).rgba;
      expect(a.length).toBe(b.length);
      let maxDiff = 0;
      for (let i = 0; i < a.length; i++) maxDiff = Math.max(maxDiff, Math.abs(a[i] - b[i]));
      // Adjacent viridis entries differ by at most 4 per channel (float32 vs float64 rounding of t·255).
      expect(maxDiff).toBeLessThanOrEqual(4);
      expect(a.some((v, i) => i % 4 === 3 && v === 255)).toBe(true);
    }
  });

  it("frees its context on destroy", () => {
    const layout = computeLayout(1, 2, 2, 20);
    const r = setup(
      "webgl2",
      { channels: 1, height: 2, width: 2, values: new Uint8Array(4) },
      layout,
      identityRanges(1),
    ) as WebGLRenderer;
    made.pop();
    r.destroy();
    expect(r.gl.isContextLost()).toBe(true);
  });
});
