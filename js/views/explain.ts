/**
 * The channel view's "How is this computed?" panel: for the map pixel under the pointer (or the one
 * clicked, pinned), what the layer did to produce that value, from an `explain` reply. A conv value is
 * taken apart as CNN Explainer does it: the patch of the conv's input under the kernel, the kernel and
 * their element-wise products as small heat-map grids (the first layer's RGB patch and kernel as colour
 * pictures; for many input channels the ones that contribute most, plus a bar of every channel's sum),
 * and the line "Σ products + bias = value". Other layers get their one line with their numbers and the
 * value before → after. The receptive field box is drawn by the channel view (`onShow`).
 *
 * @example
 *   const explain = createExplain(detailElement, { source, onShow: (e) => drawBox(e) });
 *   explain.hover({ layer: "conv1", sample: 0, channel: 3, row: 4, col: 5 }); // throttled, latest wins
 *   explain.pin({ ... });  // a click: hovering no longer changes it until clicked again
 */
import { colormapLUT } from "../colormaps";
import { el } from "../dom";
import { type Explanation, isDropped, type RequestArgs } from "../protocol";
import type { DataSource } from "../source";
import { type ThemeColors, themeColors } from "../theme";

/** One pixel of one channel's map: what an `explain` request names. */
export type ExplainTarget = RequestArgs["explain"];

export interface ExplainContext {
  source: Pick<DataSource, "explain" | "live">;
  /** The explanation shown changed (null: none), so the channel view can draw its box on the input. */
  onShow(e: Explanation | null): void;
}

export interface ExplainView {
  readonly element: HTMLElement;
  /** The explanation on show, or null. */
  readonly shown: Explanation | null;
  /** The pixel pinned by a click, or null. */
  readonly pinned: ExplainTarget | null;
  /** The pointer is over a pixel: explain it (throttled, latest wins), unless a pixel is pinned. */
  hover(target: ExplainTarget): void;
  /** A click: pin this pixel (clicking the pinned pixel again unpins it). */
  pin(target: ExplainTarget): void;
  /** Another channel, layer, sample or capture: forget what is shown. */
  reset(): void;
  /** Redraws with the current theme. */
  redraw(): void;
  destroy(): void;
}

/** At most one request per this many ms while the pointer moves (the last position is always sent). */
export const HOVER_MS = 60;
/** Input channels drawn as grids when a conv reads many; the bar shows every channel's sum. */
export const TOP_CHANNELS = 4;

/**
 * A number as the panel prints it: 5 significant digits, "not finite" for the kernel's null.
 *
 * @example
 *   num(0.123456); // "0.12346"
 */
export function num(v: number | null): string {
  if (v === null || !Number.isFinite(v)) return "not finite";
  if (v === 0) return "0";
  return String(Number(v.toPrecision(5)));
}

/** A signed term of a sum: "+ 0.5" or "− 0.5". */
function term(v: number): string {
  return v < 0 ? `− ${num(-v)}` : `+ ${num(v)}`;
}

/**
 * The input channels to draw for a conv: all of them up to TOP_CHANNELS, else the TOP_CHANNELS with
 * the largest |sum|, largest first (indices into the patch).
 *
 * @example
 *   topChannels(new Float32Array([0.1, -3, 2, 0, 0.5, 1]), 2); // [1, 2]
 */
export function topChannels(perChannel: Float32Array, k = TOP_CHANNELS): number[] {
  const all = Array.from(perChannel.keys());
  if (all.length <= k) return all;
  const size = (i: number): number => (Number.isFinite(perChannel[i]) ? Math.abs(perChannel[i]) : Infinity);
  return all.sort((a, b) => size(b) - size(a)).slice(0, k);
}

/**
 * The "Σ products + bias = value" line of a conv: the products' sum, the bias and the result, which is
 * the captured value when the kernel found them equal (printed exactly as the Value readout prints it).
 *
 * @example
 *   sumLine(e, exactValue); // "Σ 27 products + bias = 0.52 − 0.1 = 0.42"
 */
export function sumLine(e: Explanation, exact: (v: number) => string): string {
  const c = e.conv;
  if (c === null) return "";
  let products = 0;
  for (let i = 0; i < c.perChannel.length; i++) products += c.perChannel[i];
  const n = c.cin * c.kh * c.kw;
  // The conv's own value: the shown one, unless this is the activation after it.
  const own = e.op === "conv" && e.matches === true && e.value !== null ? exact(e.value) : num(c.total);
  if (c.bias === null) return `Σ ${n} products = ${own}`;
  return `Σ ${n} products + bias = ${num(products)} ${term(c.bias)} = ${own}`;
}

/**
 * The "before → after" line of an element-wise layer, a window op or an activation after a conv.
 *
 * @example
 *   beforeAfter(-0.3, 0, null, exactValue); // "x = -0.3 → 0"
 */
export function beforeAfter(
  before: number | null,
  after: number | null,
  value: number | null,
  exact: (v: number) => string,
  matches: boolean | null = null,
): string {
  const out = matches === true && value !== null ? exact(value) : num(after);
  return before === null ? `→ ${out}` : `x = ${num(before)} → ${out}`;
}

/** Largest |v| over the finite values of a few ranges of `data` (1 when all are 0). */
function maxAbs(data: Float32Array, ranges: [number, number][]): number {
  let m = 0;
  for (const [a, b] of ranges) {
    for (let i = a; i < b; i++) if (Number.isFinite(data[i])) m = Math.max(m, Math.abs(data[i]));
  }
  return m > 0 ? m : 1;
}

/** CSS px per grid cell: about 72 px across, at least 6 and at most 18 per cell. */
function cellPx(rows: number, cols: number): number {
  return Math.max(6, Math.min(18, Math.floor(72 / Math.max(rows, cols))));
}

/** A canvas of one pixel per cell, shown `cellPx` CSS px per cell without smoothing, named `label`. */
function gridCanvas(
  rows: number,
  cols: number,
  label: string,
): { canvas: HTMLCanvasElement; g: CanvasRenderingContext2D | null } {
  const canvas = el("canvas", "fm-pixelated fm-explain-grid");
  canvas.width = cols;
  canvas.height = rows;
  canvas.setAttribute("aria-label", label);
  canvas.title = label;
  const px = cellPx(rows, cols);
  canvas.style.width = `${cols * px}px`;
  canvas.style.height = `${rows * px}px`;
  return { canvas, g: canvas.getContext("2d") };
}

/**
 * A rows × cols heat-map grid of `data[offset…]` on the diverging map over [−m, m] (blue < 0 < red),
 * drawn one pixel per value and scaled up without smoothing.
 */
function heatGrid(
  data: Float32Array,
  offset: number,
  rows: number,
  cols: number,
  m: number,
  label: string,
): HTMLCanvasElement {
  const { canvas, g } = gridCanvas(rows, cols, label);
  if (g === null) return canvas;
  const image = new ImageData(cols, rows);
  const lut = colormapLUT("diverging");
  for (let i = 0; i < rows * cols; i++) {
    const v = data[offset + i];
    const t = Number.isFinite(v) ? Math.max(0, Math.min(1, 0.5 + v / (2 * m))) : 0.5;
    const j = 4 * Math.round(t * 255);
    image.data.set([lut[j], lut[j + 1], lut[j + 2], 255], 4 * i);
  }
  g.putImageData(image, 0, 0);
  return canvas;
}

/**
 * A 3 × kh × kw array (channel first) as a colour picture: `mode` "range" stretches the joint min–max
 * to 0–255 (an input patch), "zero" puts 0 at mid grey, ±max |v| at the ends (a kernel).
 */
function rgbGrid(data: Float32Array, kh: number, kw: number, mode: "range" | "zero", label: string): HTMLCanvasElement {
  const { canvas, g } = gridCanvas(kh, kw, label);
  if (g === null) return canvas;
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of data) {
    if (!Number.isFinite(v)) continue;
    lo = Math.min(lo, v);
    hi = Math.max(hi, v);
  }
  const m = Math.max(Math.abs(lo), Math.abs(hi)) || 1;
  const image = new ImageData(kw, kh);
  for (let y = 0; y < kh; y++) {
    for (let x = 0; x < kw; x++) {
      for (let c = 0; c < 3; c++) {
        const v = data[(c * kh + y) * kw + x];
        const t = !Number.isFinite(v)
          ? 0.5
          : mode === "zero"
            ? 0.5 + v / (2 * m)
            : hi > lo
              ? (v - lo) / (hi - lo)
              : 0.5;
        image.data[4 * (y * kw + x) + c] = Math.round(255 * t);
      }
      image.data[4 * (y * kw + x) + 3] = 255;
    }
  }
  g.putImageData(image, 0, 0);
  return canvas;
}

/** A grid with its caption under it. */
function figure(canvas: HTMLCanvasElement, caption: string): HTMLElement {
  const f = el("figure", "fm-explain-figure");
  f.append(canvas, el("figcaption", "fm-caption", caption));
  return f;
}

/** A bar per input channel of its sum (up above zero, down below), the drawn ones in the text colour. */
function channelBars(perChannel: Float32Array, first: number, drawn: number[], colors: ThemeColors): HTMLCanvasElement {
  const canvas = el("canvas", "fm-explain-bars");
  const n = perChannel.length;
  canvas.setAttribute("aria-label", `Sum of each of the ${n} input channels`);
  const dpr = window.devicePixelRatio || 1;
  const cssW = 280;
  const cssH = 44;
  canvas.width = Math.round(cssW * dpr);
  canvas.height = Math.round(cssH * dpr);
  canvas.style.width = `${cssW}px`;
  canvas.style.height = `${cssH}px`;
  const g = canvas.getContext("2d");
  if (g === null) return canvas;
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  const m = maxAbs(perChannel, [[0, n]]);
  const mid = cssH / 2;
  const barW = cssW / n;
  const lut = colormapLUT("diverging");
  const shown = new Set(drawn);
  for (let i = 0; i < n; i++) {
    const v = Number.isFinite(perChannel[i]) ? perChannel[i] : 0;
    const h = (Math.abs(v) / m) * (mid - 1);
    const j = v >= 0 ? 4 * 235 : 4 * 20;
    g.fillStyle = shown.has(i) ? colors.fg : `rgb(${lut[j]}, ${lut[j + 1]}, ${lut[j + 2]})`;
    g.fillRect(i * barW, v >= 0 ? mid - h : mid, Math.max(1, barW - (barW > 3 ? 1 : 0)), Math.max(h, 0.5));
  }
  g.fillStyle = colors.muted;
  g.fillRect(0, mid, cssW, 0.5);
  canvas.title = `input channels ${first}–${first + n - 1}: largest |Σ| ${num(m)}`;
  return canvas;
}

/** The conv part: grids for the drawn input channels, the bar of all sums, the Σ line. */
function convSection(e: Explanation, colors: ThemeColors, exact: (v: number) => string): HTMLElement[] {
  const c = e.conv;
  if (c === null) return [];
  const size = c.kh * c.kw;
  const products = new Float32Array(c.patch.length);
  for (let i = 0; i < products.length; i++) products[i] = c.patch[i] * c.kernel[i];
  const out: HTMLElement[] = [];
  if (c.rgb && c.cin === 3) {
    // The first layer reads the picture: patch and kernel as colours; products summed over R, G, B.
    const summed = new Float32Array(size);
    for (let ch = 0; ch < 3; ch++) for (let i = 0; i < size; i++) summed[i] += products[ch * size + i];
    const row = el("div", "fm-explain-row");
    row.append(
      figure(rgbGrid(c.patch, c.kh, c.kw, "range", "Input patch (RGB)"), "input patch (RGB)"),
      el("span", "fm-explain-op", "×"),
      figure(rgbGrid(c.kernel, c.kh, c.kw, "zero", "Kernel (RGB)"), "kernel (grey = 0)"),
      el("span", "fm-explain-op", "="),
      figure(
        heatGrid(summed, 0, c.kh, c.kw, maxAbs(summed, [[0, size]]), "Products, summed over R, G, B"),
        "products (R + G + B)",
      ),
    );
    const sums = ["R", "G", "B"].map((name, i) => `${name} ${num(c.perChannel[i])}`).join(", ");
    out.push(row, el("div", "fm-caption", `Σ per colour channel: ${sums}`));
  } else {
    const drawn = topChannels(c.perChannel);
    const ranges = drawn.map((i): [number, number] => [i * size, (i + 1) * size]);
    const mPatch = maxAbs(c.patch, ranges);
    const mKernel = maxAbs(c.kernel, ranges);
    const mProducts = maxAbs(products, ranges);
    const table = el("div", "fm-explain-channels");
    for (const i of drawn) {
      const ch = c.inputs[0] + i;
      const row = el("div", "fm-explain-row");
      row.append(
        el("span", "fm-explain-channel", `in ${ch}`),
        heatGrid(c.patch, i * size, c.kh, c.kw, mPatch, `Patch of input channel ${ch}`),
        el("span", "fm-explain-op", "×"),
        heatGrid(c.kernel, i * size, c.kh, c.kw, mKernel, `Kernel for input channel ${ch}`),
        el("span", "fm-explain-op", "="),
        heatGrid(products, i * size, c.kh, c.kw, mProducts, `Products of input channel ${ch}`),
        el("span", "fm-explain-channel-sum", `Σ ${num(c.perChannel[i])}`),
      );
      table.append(row);
    }
    out.push(
      table,
      el(
        "div",
        "fm-caption",
        `patch × kernel = products (blue < 0 < red; max |.| ${num(mPatch)}, ${num(mKernel)}, ${num(mProducts)})`,
      ),
    );
    if (c.cin > drawn.length) {
      out.push(
        channelBars(c.perChannel, c.inputs[0], drawn, colors),
        el(
          "div",
          "fm-caption",
          `Σ of each of the ${c.cin} input channels ${c.inputs[0]}–${c.inputs[1] - 1}; the ${drawn.length} largest |Σ| drawn above`,
        ),
      );
    }
  }
  const sum = el("div", "fm-explain-sum", sumLine(e, exact));
  sum.setAttribute("aria-label", "Sum");
  out.push(sum);
  return out;
}

/**
 * Fills `body` with the explanation: the pixel and its value, the layer's line, the conv's grids and
 * Σ line or the before → after line, and the kernel's note. Text goes in as text, never HTML.
 *
 * @example
 *   renderExplanation(panelBody, explanation, themeColors(root), exactValue);
 */
export function renderExplanation(
  body: HTMLElement,
  e: Explanation,
  colors: ThemeColors,
  exact: (v: number) => string,
): void {
  const head = el(
    "div",
    "fm-explain-value",
    `${e.layer}, channel ${e.channel} at (row ${e.row}, col ${e.col}) = ${e.value === null ? "not finite" : exact(e.value)}`,
  );
  const parts: HTMLElement[] = [head];
  if (e.text !== "") parts.push(el("div", "fm-explain-text", e.text));
  if (e.conv !== null) {
    if (e.op === "conv+act") parts.push(el("div", "fm-caption", `the value of ${e.conv.layer}, before ${e.layer}:`));
    parts.push(...convSection(e, colors, exact));
  }
  if (e.activation !== null) {
    const a = e.activation;
    parts.push(el("div", "fm-explain-text", a.text));
    const line = el("div", "fm-explain-sum", beforeAfter(a.before, a.after, e.value, exact, e.matches));
    line.setAttribute("aria-label", "Before and after");
    parts.push(line);
  }
  if (e.op === "layer") {
    if (e.window !== null) {
      const w = e.window;
      const m = maxAbs(w.data, [[0, w.data.length]]);
      const row = el("div", "fm-explain-row");
      row.append(figure(heatGrid(w.data, 0, w.rows, w.cols, m, "The inputs it reads"), `${w.rows} × ${w.cols} inputs`));
      parts.push(row);
    }
    if (e.before !== null || e.after !== null) {
      const line = el("div", "fm-explain-sum", beforeAfter(e.before, e.after, e.value, exact, e.matches));
      line.setAttribute("aria-label", "Before and after");
      parts.push(line);
    }
  }
  if (e.note !== "") parts.push(el("div", "fm-caption fm-explain-note", e.note));
  body.replaceChildren(...parts);
}

function sameTarget(a: ExplainTarget | null, b: ExplainTarget | null): boolean {
  return a !== null && b !== null && JSON.stringify(a) === JSON.stringify(b);
}

/**
 * Builds the panel inside `container`.
 *
 * @example
 *   const explain = createExplain(detail.element, { source, onShow: drawBox }, exactValue);
 */
export function createExplain(container: HTMLElement, ctx: ExplainContext, exact: (v: number) => string): ExplainView {
  const element = el("section", "fm-explain");
  element.setAttribute("aria-label", "How is this computed?");
  const title = el("div", "fm-section-title", "How is this computed?");
  const hint = el("div", "fm-caption fm-explain-hint");
  const message = el("div", "fm-explain-message");
  message.setAttribute("role", "status");
  const body = el("div", "fm-explain-body");
  element.append(title, hint, message, body);
  container.append(element);

  let shown: Explanation | null = null;
  let pinned: ExplainTarget | null = null;
  /** The target whose reply is wanted; replies for others are ignored. */
  let wanted: ExplainTarget | null = null;
  /** Throttling: the target waiting for the cool-down to end, and the cool-down's timer. */
  let waiting: ExplainTarget | null = null;
  let timer: ReturnType<typeof setTimeout> | null = null;

  function setState(state: "idle" | "loading" | "ready" | "error" | "offline"): void {
    element.dataset.state = state;
    element.setAttribute("aria-busy", String(state === "loading"));
    body.classList.toggle("fm-stale", state === "loading");
  }

  function setMessage(text: string, isError = false): void {
    message.textContent = text;
    message.hidden = text === "";
    message.classList.toggle("fm-error-text", isError);
  }

  function idle(): void {
    if (!ctx.source.live) {
      setState("offline");
      hint.textContent = "";
      setMessage("How a value is computed needs the model, in the notebook's live kernel; this saved file has none.");
      return;
    }
    setState("idle");
    setMessage("");
    hint.textContent = "Point at a pixel of the map to see how its value is computed; click to pin it.";
  }

  function updateHint(): void {
    if (!ctx.source.live) return;
    hint.textContent =
      pinned === null
        ? "Point at a pixel of the map to see how its value is computed; click to pin it."
        : `Pinned at (row ${pinned.row}, col ${pinned.col}); click it again to follow the pointer.`;
  }

  function request(target: ExplainTarget): void {
    if (sameTarget(target, wanted) || (wanted === null && sameTarget(target, shownTarget()))) return;
    wanted = target;
    setState("loading");
    ctx.source.explain(target).then(
      (e) => {
        if (!sameTarget(target, wanted)) return;
        wanted = null;
        shown = e;
        setMessage("");
        renderExplanation(body, e, themeColors(element), exact);
        setState("ready");
        ctx.onShow(e);
      },
      (err: unknown) => {
        if (isDropped(err) || !sameTarget(target, wanted)) return;
        wanted = null;
        setState("error");
        setMessage(`Could not explain (row ${target.row}, col ${target.col}): ${(err as Error).message}`, true);
      },
    );
  }

  function shownTarget(): ExplainTarget | null {
    return shown === null
      ? null
      : { layer: shown.layer, sample: shown.sample, channel: shown.channel, row: shown.row, col: shown.col };
  }

  function cooled(): void {
    timer = null;
    if (waiting !== null && pinned === null) {
      const next = waiting;
      waiting = null;
      request(next);
      timer = setTimeout(cooled, HOVER_MS);
    }
  }

  idle();

  return {
    element,
    get shown(): Explanation | null {
      return shown;
    },
    get pinned(): ExplainTarget | null {
      return pinned;
    },
    hover(target: ExplainTarget): void {
      if (!ctx.source.live || pinned !== null) return;
      if (timer !== null) {
        waiting = target;
        return;
      }
      request(target);
      timer = setTimeout(cooled, HOVER_MS);
    },
    pin(target: ExplainTarget): void {
      if (!ctx.source.live) return;
      waiting = null;
      pinned = sameTarget(target, pinned) ? null : target;
      element.classList.toggle("fm-pinned", pinned !== null);
      updateHint();
      request(target);
    },
    reset(): void {
      shown = null;
      pinned = null;
      wanted = null;
      waiting = null;
      element.classList.remove("fm-pinned");
      body.replaceChildren();
      idle();
      ctx.onShow(null);
    },
    redraw(): void {
      if (shown !== null) renderExplanation(body, shown, themeColors(element), exact);
    },
    destroy(): void {
      if (timer !== null) clearTimeout(timer);
      wanted = null;
      element.remove();
    },
  };
}
