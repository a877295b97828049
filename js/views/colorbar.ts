/**
 * A vertical colorbar: the colormap (high values at the top) with ticks at round values of the current
 * scale, a caption, and a swatch for the NaN/Inf colour. Text is DOM (textContent), so it follows the
 * theme's fonts and is readable by screen readers.
 *
 * @example
 *   const bar = createColorbar(box);
 *   bar.update("viridis", -0.5, 3.2, "layer scale");
 */
import { type ColormapName, colormapLUT, NAN_COLOR } from "../colormaps";
import { formatValue } from "../scale";

export interface Colorbar {
  readonly element: HTMLElement;
  /** Shows `colormap` spanning [lo, hi] (real values of the current scale) under a caption. */
  update(colormap: ColormapName, lo: number, hi: number, label: string): void;
  destroy(): void;
}

/**
 * Round tick values inside [lo, hi], about `count` of them (steps of 1, 2 or 5 × 10^n).
 *
 * @example
 *   niceTicks(-0.5, 3.2, 5); // [0, 1, 2, 3]
 */
export function niceTicks(lo: number, hi: number, count: number): number[] {
  if (!(hi > lo) || !Number.isFinite(lo) || !Number.isFinite(hi)) return [];
  const raw = (hi - lo) / Math.max(1, count);
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw) ?? 10 * power;
  const ticks: number[] = [];
  for (let i = Math.ceil(lo / step); i * step <= hi + step * 1e-9; i++) {
    // Multiplying the integer index avoids the drift of repeated addition (0.1 + 0.2 …).
    const v = Number((i * step).toPrecision(12));
    ticks.push(Object.is(v, -0) ? 0 : v);
  }
  return ticks;
}

/**
 * Creates a colorbar inside `container` (it fills the container's height; at least 120 px).
 *
 * @example
 *   const bar = createColorbar(document.querySelector(".fm-colorbar")!);
 */
export function createColorbar(container: HTMLElement): Colorbar {
  const element = document.createElement("div");
  element.className = "fm-grid-colorbar";
  element.setAttribute("role", "img");
  const caption = document.createElement("div");
  caption.className = "fm-grid-colorbar-label";
  const body = document.createElement("div");
  body.className = "fm-grid-colorbar-body";
  body.style.position = "relative";
  const strip = document.createElement("canvas");
  strip.className = "fm-grid-colorbar-strip";
  strip.width = 1;
  strip.height = 256;
  const ticks = document.createElement("div");
  ticks.className = "fm-grid-colorbar-ticks";
  ticks.style.position = "relative";
  body.append(strip, ticks);
  const nan = document.createElement("div");
  nan.className = "fm-grid-colorbar-nan";
  const swatch = document.createElement("span");
  swatch.className = "fm-grid-colorbar-swatch";
  swatch.style.background = `rgb(${NAN_COLOR[0]}, ${NAN_COLOR[1]}, ${NAN_COLOR[2]})`;
  const nanText = document.createElement("span");
  nanText.textContent = "NaN/Inf";
  nan.append(swatch, nanText);
  element.append(caption, body, nan);
  container.append(element);
  const ctx = strip.getContext("2d");

  function update(colormap: ColormapName, lo: number, hi: number, label: string): void {
    const lut = colormapLUT(colormap);
    if (ctx !== null) {
      const image = ctx.createImageData(1, 256);
      for (let i = 0; i < 256; i++) image.data.set(lut.subarray(4 * (255 - i), 4 * (255 - i) + 4), 4 * i);
      ctx.putImageData(image, 0, 0);
    }
    caption.textContent = label;
    const values = niceTicks(lo, hi, 5);
    // The ends are labelled with the exact range so the extremes are never left to guesswork.
    const all = [
      hi,
      ...values.filter((v) => Math.abs(v - hi) > 0.08 * (hi - lo) && Math.abs(v - lo) > 0.08 * (hi - lo)),
      lo,
    ];
    ticks.replaceChildren(
      ...all.map((v) => {
        const t = document.createElement("div");
        t.className = "fm-grid-colorbar-tick";
        t.style.position = "absolute";
        t.style.top = `${hi > lo ? ((hi - v) / (hi - lo)) * 100 : 50}%`;
        t.dataset.value = String(v);
        t.textContent = formatValue(v);
        return t;
      }),
    );
    element.setAttribute("aria-label", `${label}: ${colormap} colormap from ${formatValue(lo)} to ${formatValue(hi)}`);
  }

  return {
    element,
    update,
    destroy(): void {
      element.remove();
    },
  };
}
