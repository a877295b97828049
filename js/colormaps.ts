/**
 * Colormaps as 256-entry RGBA lookup tables, the form both renderers use (a 256×1 texture in WebGL2,
 * an index table in Canvas 2D).
 *
 * @example
 *   const lut = colormapLUT("viridis");      // Uint8Array(1024)
 *   const [r, g, b] = lut.subarray(4 * 255); // the colour of the top of the scale
 */
import { interpolateMagma, interpolateRdBu, interpolateTurbo, interpolateViridis } from "d3-scale-chromatic";

export type ColormapName = "gray" | "viridis" | "magma" | "diverging";

/** Every colormap, in the order a picker should list them. */
export const COLORMAPS: readonly ColormapName[] = ["gray", "viridis", "magma", "diverging"];

/**
 * RGBA of non-finite values (quantized q = 255). Saturated magenta: no entry of any map above comes
 * near it (gray is neutral, viridis blue–green–yellow, magma's pinks are dark or desaturated, RdBu has
 * no purple), so a NaN never passes for a real value.
 */
export const NAN_COLOR: readonly [number, number, number, number] = [255, 0, 255, 255];

const cache = new Map<ColormapName, Uint8Array>();

/** Parses the two forms d3 interpolators return: "#rrggbb" and "rgb(r, g, b)". */
function parseColor(css: string): [number, number, number] {
  if (css.startsWith("#") && css.length === 7) {
    return [parseInt(css.slice(1, 3), 16), parseInt(css.slice(3, 5), 16), parseInt(css.slice(5, 7), 16)];
  }
  const m = /^rgb\((\d+),\s*(\d+),\s*(\d+)\)$/.exec(css);
  if (m === null) throw new Error(`colormaps: cannot parse colour "${css}" from d3-scale-chromatic`);
  return [Number(m[1]), Number(m[2]), Number(m[3])];
}

function interpolator(name: ColormapName): (t: number) => string {
  switch (name) {
    case "gray": {
      return (t) => {
        const v = Math.round(t * 255);
        return `rgb(${v}, ${v}, ${v})`;
      };
    }
    case "viridis":
      return interpolateViridis;
    case "magma":
      return interpolateMagma;
    case "diverging":
      // RdBu runs red→blue; reversed so negative is blue and positive red, as in most papers.
      return (t) => interpolateRdBu(1 - t);
  }
}

/**
 * The 256×RGBA lookup table of a colormap (cached; do not modify the returned array).
 *
 * @example
 *   colormapLUT("gray").subarray(0, 4); // [0, 0, 0, 255]: black is the bottom of the scale
 */
export function colormapLUT(name: ColormapName): Uint8Array {
  const hit = cache.get(name);
  if (hit !== undefined) return hit;
  if (!COLORMAPS.includes(name)) {
    throw new Error(`colormaps: unknown colormap "${String(name)}"; expected one of ${COLORMAPS.join(", ")}`);
  }
  const lut = sample(interpolator(name));
  cache.set(name, lut);
  return lut;
}

function sample(f: (t: number) => string): Uint8Array {
  const lut = new Uint8Array(256 * 4);
  for (let i = 0; i < 256; i++) {
    const [r, g, b] = parseColor(f(i / 255));
    lut[4 * i] = r;
    lut[4 * i + 1] = g;
    lut[4 * i + 2] = b;
    lut[4 * i + 3] = 255;
  }
  return lut;
}

let heatmap: Uint8Array | null = null;

/**
 * The lookup table of Grad-CAM heatmaps: Turbo, a perceptually smoothed jet (dark blue = no evidence,
 * dark red = the most). Not a grid colormap: a heatmap over a photo needs its hue contrast.
 *
 * @example
 *   heatmapLUT().subarray(4 * 255, 4 * 255 + 3); // the dark red of the hottest spot
 */
export function heatmapLUT(): Uint8Array {
  heatmap ??= sample(interpolateTurbo);
  return heatmap;
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
