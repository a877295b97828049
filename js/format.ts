/**
 * How numbers of the view read as text: probabilities, shapes and predicted classes (activation values:
 * `formatValue` in scale.ts).
 *
 * @example
 *   formatPercent(0.712); // "71%"
 */
import type { Prediction } from "./protocol";

/**
 * A probability as a short percentage: "72%", "0.4%" below 1%, "<0.1%" below that, and "NaN" for
 * the null the kernel sends when the model's output is not finite (NaN inputs).
 */
export function formatPercent(p: number | null): string {
  if (p === null || !Number.isFinite(p)) return "NaN";
  const pct = p * 100;
  if (pct >= 1) return `${Math.round(pct)}%`;
  return pct >= 0.1 ? `${pct.toFixed(1)}%` : "<0.1%";
}

/**
 * How a prediction reads in a picker: its class name, or "class N" for a model without names.
 *
 * @example
 *   predictionLabel({ index: 17, label: null, prob: 0.4 }); // "class 17"
 */
export function predictionLabel(p: Prediction): string {
  return p.label ?? `class ${p.index}`;
}

/**
 * `C × H × W` of a layer (the batch dimension left out).
 *
 * @example
 *   formatShape([1, 64, 56, 56]); // "64 × 56 × 56"
 */
export function formatShape(shape: readonly number[]): string {
  return shape.slice(1).join(" × ");
}
