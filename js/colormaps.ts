/**
 * Colormaps as 256-entry RGBA lookup tables, the form both renderers use (a 256×1 texture in WebGL2,
 * an index table in Canvas 2D).
 *
 * @example
 *   const lut = colormapLUT("viridis");      // Uint8Array(1024)
 *   const [r, g, b] = lut.subarray(4 * 255); // the colour of the top of the scale
 */
import generated from "../fmwidget/colormaps.json";

export type ColormapName = "gray" | "viridis" | "magma" | "diverging";

/** Every colormap, in the order a picker should list them. */
export const COLORMAPS: readonly ColormapName[] = ["gray", "viridis", "magma", "diverging"];

/**
 * RGBA of non-finite values (quantized q = 255). Saturated magenta: no entry of any map above comes
 * near it (gray is neutral, viridis blue–green–yellow, magma's pinks are dark or desaturated, RdBu has
 * no purple), so a NaN never passes for a real value.
 */
export const NAN_COLOR: readonly [number, number, number, number] = [255, 0, 255, 255];

/**
 * The colour tables, generated from d3-scale-chromatic by scripts/colormaps.mjs into one JSON file
 * that the kernel reads too (its static picture of the grid uses the same colours).
 */
const TABLES: Readonly<Record<ColormapName | "turbo", string>> = generated.tables;

const cache = new Map<string, Uint8Array>();

/**
 * The 256×RGBA lookup table of a colormap (cached; do not modify the returned array).
 *
 * @example
 *   colormapLUT("gray").subarray(0, 4); // [0, 0, 0, 255]: black is the bottom of the scale
 */
export function colormapLUT(name: ColormapName): Uint8Array {
  if (!COLORMAPS.includes(name)) {
    throw new Error(`colormaps: unknown colormap "${String(name)}"; expected one of ${COLORMAPS.join(", ")}`);
  }
  return table(name);
}

function table(name: ColormapName | "turbo"): Uint8Array {
  const hit = cache.get(name);
  if (hit !== undefined) return hit;
  const hex = TABLES[name];
  const lut = new Uint8Array(256 * 4);
  for (let i = 0; i < 256; i++) {
    lut[4 * i] = parseInt(hex.slice(6 * i, 6 * i + 2), 16);
    lut[4 * i + 1] = parseInt(hex.slice(6 * i + 2, 6 * i + 4), 16);
    lut[4 * i + 2] = parseInt(hex.slice(6 * i + 4, 6 * i + 6), 16);
    lut[4 * i + 3] = 255;
  }
  cache.set(name, lut);
  return lut;
}

/**
 * The lookup table of Grad-CAM heatmaps: Turbo, a perceptually smoothed jet (dark blue = no evidence,
 * dark red = the most). Not a grid colormap: a heatmap over a photo needs its hue contrast.
 *
 * @example
 *   heatmapLUT().subarray(4 * 255, 4 * 255 + 3); // the dark red of the hottest spot
 */
export function heatmapLUT(): Uint8Array {
  return table("turbo");
}

/**
 * Whether a colormap has a meaningful centre (so its scale should be symmetric around zero).
 *
 * @example
 *   if (isDiverging(name)) symmetric = true;
 */
export function isDiverging(name: ColormapName): boolean {
  return name === "diverging";
}
