import { describe, expect, it } from "vitest";
import { COLORMAPS, type ColormapName, colormapLUT, heatmapLUT, isDiverging, NAN_COLOR } from "./colormaps";

/** Relative luminance (WCAG, linear-light sRGB) of LUT entry i. */
function luminance(lut: Uint8Array, i: number): number {
  const lin = (c: number): number => {
    const s = c / 255;
    return s <= 0.04045 ? s / 12.92 : ((s + 0.055) / 1.055) ** 2.4;
  };
  return 0.2126 * lin(lut[4 * i]) + 0.7152 * lin(lut[4 * i + 1]) + 0.0722 * lin(lut[4 * i + 2]);
}

function rgba(lut: Uint8Array, i: number): number[] {
  return Array.from(lut.subarray(4 * i, 4 * i + 4));
}

describe("colormapLUT", () => {
  it("is 256 opaque RGBA entries for every map, and cached", () => {
    for (const name of COLORMAPS) {
      const lut = colormapLUT(name);
      expect(lut.length).toBe(1024);
      for (let i = 0; i < 256; i++) expect(lut[4 * i + 3]).toBe(255);
      expect(colormapLUT(name)).toBe(lut);
    }
  });

  it("has the expected endpoints", () => {
    expect(rgba(colormapLUT("gray"), 0)).toEqual([0, 0, 0, 255]);
    expect(rgba(colormapLUT("gray"), 255)).toEqual([255, 255, 255, 255]);
    // d3's viridis and magma endpoints: #440154 → #fde725, #000004 → #fcfdbf
    expect(rgba(colormapLUT("viridis"), 0)).toEqual([0x44, 0x01, 0x54, 255]);
    expect(rgba(colormapLUT("viridis"), 255)).toEqual([0xfd, 0xe7, 0x25, 255]);
    expect(rgba(colormapLUT("magma"), 0)).toEqual([0x00, 0x00, 0x04, 255]);
    expect(rgba(colormapLUT("magma"), 255)).toEqual([0xfc, 0xfd, 0xbf, 255]);
  });

  it.each(["gray", "viridis", "magma"] as ColormapName[])("%s brightens monotonically", (name) => {
    const lut = colormapLUT(name);
    // Rounding to 8 bits makes neighbours dip by up to ~3e-4 in viridis; a real reversal is far larger.
    for (let i = 1; i < 256; i++) {
      expect(luminance(lut, i)).toBeGreaterThan(luminance(lut, i - 1) - 1e-3);
    }
    for (let i = 8; i < 256; i += 8) {
      expect(luminance(lut, i)).toBeGreaterThan(luminance(lut, i - 8));
    }
    expect(luminance(lut, 255) - luminance(lut, 0)).toBeGreaterThan(0.7);
  });

  it("diverging: negative blue, centre near white, positive red", () => {
    const lut = colormapLUT("diverging");
    const [r0, , b0] = rgba(lut, 0);
    const [r1, , b1] = rgba(lut, 255);
    expect(b0).toBeGreaterThan(r0 + 50);
    expect(r1).toBeGreaterThan(b1 + 50);
    for (const i of [127, 128]) {
      const [r, g, b] = rgba(lut, i);
      expect(Math.min(r, g, b)).toBeGreaterThan(225);
      expect(Math.max(r, g, b) - Math.min(r, g, b)).toBeLessThan(15);
    }
    expect(isDiverging("diverging")).toBe(true);
    expect(COLORMAPS.filter(isDiverging)).toEqual(["diverging"]);
  });

  it("NaN colour is far from every colormap entry", () => {
    for (const name of COLORMAPS) {
      const lut = colormapLUT(name);
      for (let i = 0; i < 256; i++) {
        const d = Math.hypot(lut[4 * i] - NAN_COLOR[0], lut[4 * i + 1] - NAN_COLOR[1], lut[4 * i + 2] - NAN_COLOR[2]);
        expect(d).toBeGreaterThan(100);
      }
    }
  });

  it("rejects an unknown name with the list of valid ones", () => {
    expect(() => colormapLUT("jet" as ColormapName)).toThrow(/"jet".*gray, viridis, magma, diverging/);
  });
});

describe("the generated colour tables (fmwidget/colormaps.json, shared with the kernel)", () => {
  it("are d3-scale-chromatic's colours, sampled at 256 points (npm run colormaps rewrites them)", async () => {
    const d3 = await import("d3-scale-chromatic");
    const css = (f: (t: number) => string, i: number): number[] => {
      const c = d3color(f(i / 255));
      return [c[0], c[1], c[2], 255];
    };
    const maps: [string, (t: number) => string, Uint8Array][] = [
      ["viridis", d3.interpolateViridis, colormapLUT("viridis")],
      ["magma", d3.interpolateMagma, colormapLUT("magma")],
      ["diverging", (t) => d3.interpolateRdBu(1 - t), colormapLUT("diverging")],
      ["turbo", d3.interpolateTurbo, heatmapLUT()],
    ];
    for (const [name, f, lut] of maps) {
      for (let i = 0; i < 256; i++) expect(rgba(lut, i), `${name}[${i}]`).toEqual(css(f, i));
    }
  });
});

function d3color(css: string): [number, number, number] {
  if (css.startsWith("#")) return [1, 3, 5].map((k) => parseInt(css.slice(k, k + 2), 16)) as [number, number, number];
  const m = /^rgb\((\d+),\s*(\d+),\s*(\d+)\)$/.exec(css);
  if (m === null) throw new Error(`unparsed colour ${css}`);
  return [Number(m[1]), Number(m[2]), Number(m[3])];
}
