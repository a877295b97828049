/**
 * Value scales: which range a tile is coloured over, how quantized bytes turn back into values, and how
 * values are printed.
 *
 * @example
 *   const [lo, hi] = displayRange("layer", false, cMin, cMax, lMin, lMax, gMin, gMax);
 *   const t = toUnit(dequantize(q, cMin, cMax), lo, hi); // 0..1, the colormap position
 */

/** Normalization scope: each channel on its own range, the layer's batch range, or all layers' range. */
export type Scope = "channel" | "layer" | "global";

/**
 * The value range [lo, hi] a tile is drawn over.
 *
 * `symmetric` widens the range to [-m, m] with m = max(|lo|, |hi|), so 0 sits at the centre of the map.
 * A degenerate range is widened so it is never empty and zero keeps its meaning: a constant c becomes
 * [min(c, 0), max(c, 0)] (a positive constant is drawn at the top, a negative one at the bottom), an
 * all-zero (dead) channel becomes [0, 1] (drawn at the bottom), and symmetric with m = 0 becomes [-1, 1].
 * Non-finite bounds are treated as 0 (the kernel sends 0 for channels with no finite value).
 *
 * @example
 *   displayRange("channel", true, -1, 3, 0, 0, 0, 0); // [-3, 3]
 */
export function displayRange(
  scope: Scope,
  symmetric: boolean,
  channelMin: number,
  channelMax: number,
  layerMin: number,
  layerMax: number,
  globalMin: number,
  globalMax: number,
): [number, number] {
  let lo: number;
  let hi: number;
  switch (scope) {
    case "channel":
      [lo, hi] = [channelMin, channelMax];
      break;
    case "layer":
      [lo, hi] = [layerMin, layerMax];
      break;
    case "global":
      [lo, hi] = [globalMin, globalMax];
      break;
  }
  if (!Number.isFinite(lo)) lo = 0;
  if (!Number.isFinite(hi)) hi = 0;
  if (symmetric) {
    const m = Math.max(Math.abs(lo), Math.abs(hi));
    return m > 0 ? [-m, m] : [-1, 1];
  }
  if (hi > lo) return [lo, hi];
  const c = lo;
  return c === 0 ? [0, 1] : [Math.min(c, 0), Math.max(c, 0)];
}

/**
 * The value a quantized byte stands for (protocol.md: `v = min + q / 254 * (max - min)`, q = 255 is
 * NaN/±Inf). Exact at q = 0 (min) and q = 254 (max); elsewhere within (max - min) / 508.
 *
 * @example
 *   dequantize(127, -1, 1); // 0
 */
export function dequantize(q: number, min: number, max: number): number {
  if (q >= 255) return NaN;
  // The endpoints are returned as given because min + (max - min) need not round back to max.
  if (q <= 0) return min;
  if (q === 254) return max;
  return min + (q / 254) * (max - min);
}

/**
 * Position of a value in [lo, hi] as 0..1, clamped. NaN stays NaN (the caller draws it in NAN_COLOR);
 * +Inf maps to 1 and -Inf to 0. If hi <= lo (callers using displayRange never pass this) the answer is 0.5.
 *
 * @example
 *   toUnit(5, 0, 10); // 0.5
 */
export function toUnit(v: number, lo: number, hi: number): number {
  if (Number.isNaN(v)) return NaN;
  if (!(hi > lo)) return 0.5;
  const t = (v - lo) / (hi - lo);
  return Math.min(1, Math.max(0, t));
}

/**
 * A compact, honest label: 3 significant digits, integers up to 9999 in full, exponent notation outside
 * [1e-3, 1e4); "NaN", "Inf", "-Inf" for non-finite values.
 *
 * @example
 *   formatValue(0.012345); // "0.0123"
 *   formatValue(123456);   // "1.23e5"
 */
export function formatValue(v: number): string {
  if (Number.isNaN(v)) return "NaN";
  if (v === Infinity) return "Inf";
  if (v === -Infinity) return "-Inf";
  if (v === 0) return "0";
  const a = Math.abs(v);
  if (a >= 1e4 || a < 1e-3) {
    const [mant, exp] = v.toExponential(2).split("e");
    return `${trimZeros(mant)}e${Number(exp)}`;
  }
  // toPrecision(3) switches to exponent form from 999.5 up.
  if (a >= 999.5) return String(Math.round(v));
  return trimZeros(v.toPrecision(3));
}

function trimZeros(s: string): string {
  return s.includes(".") ? s.replace(/\.?0+$/, "") : s;
}
