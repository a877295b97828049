/**
 * The channel view's "Top dataset examples" section: the k images of the widget's dataset scan on which
 * the open channel fires most, best first, each as its receptive-field crop (with a ring where the
 * channel peaks), its score, dataset index and label. Clicking one makes that image the widget's input.
 * Without crops (no dataset) the examples are listed as text with the kernel's note. Loading, error and
 * "making it the input" states are shown in the section, never a blank box.
 *
 * @example
 *   const examples = createExamples(detailElement, { source, scan: () => store.get("scan_info"), revision });
 *   examples.show("conv2", 3); // asks the source (latest call wins), draws when it arrives
 *   examples.show(null, null); // hides
 */
import { el } from "../dom";
import { drawUpscaled } from "../pictures";
import { type DatasetExample, type ExamplesResult, isDropped, type ScanInfo } from "../protocol";
import { formatValue } from "../scale";
import type { DataSource } from "../source";

/** The crops' size on screen (CSS px): small crops are upscaled, pixelated, to this box. */
export const THUMB_PX = 84;

export interface ExamplesContext {
  source: Pick<DataSource, "examples" | "useExample" | "live">;
  /** The `scan_info` trait. */
  scan(): ScanInfo | null;
  /** The revision the view knows (a new one ends the "making it the input" state). */
  revision(): number;
}

export interface Examples {
  readonly element: HTMLElement;
  /** Shows the top examples of a channel (hidden when the scan does not cover the layer, or with null). */
  show(layer: string | null, channel: number | null): void;
  destroy(): void;
}

/**
 * The section's caption.
 *
 * @example
 *   examplesCaption(9, { images: 1000, complete: true }, true); // "top 9 of 1,000 images; ring = where the channel peaks"
 */
export function examplesCaption(shown: number, scan: Pick<ScanInfo, "images" | "complete">, crops: boolean): string {
  const of = `top ${shown} of ${scan.images.toLocaleString("en-US")} images${scan.complete ? "" : " (scan interrupted)"}`;
  return crops ? `${of}; ring = where the channel peaks` : of;
}

/** Side of a crop thumbnail's canvas in device pixels at the least (CSS scales it to fit). */
const THUMB_PIXELS = 168;

/**
 * Paints a crop (RGB bytes), upscaled by a whole factor without smoothing, and rings its peak:
 * a thin magenta ring over a dark one, drawn at the thumbnail's resolution so that it stays thin
 * on a crop of a few pixels and visible on any image.
 */
function drawCrop(canvas: HTMLCanvasElement, e: DatasetExample): void {
  const crop = e.crop;
  if (crop === null) return;
  const scale = drawUpscaled(canvas, crop, THUMB_PIXELS);
  const g = canvas.getContext("2d");
  if (scale === 0 || g === null || e.peak === null) return;
  const x = (e.peak[1] + 0.5) * scale;
  const y = (e.peak[0] + 0.5) * scale;
  const r = Math.max(6, Math.min(canvas.width, canvas.height) / 7);
  for (const [color, width] of [
    ["rgba(0, 0, 0, 0.75)", 5],
    ["#ff2bd6", 2.5],
  ] as const) {
    g.beginPath();
    g.arc(x, y, r, 0, 2 * Math.PI);
    g.strokeStyle = color;
    g.lineWidth = width;
    g.stroke();
  }
}

function describe(e: DatasetExample): string {
  const label = e.label === null ? "" : ` (label ${e.label})`;
  return `Dataset image #${e.index}${label}: ${formatValue(e.value)} at (row ${e.row}, col ${e.col}) of the map`;
}

/**
 * Builds the section inside `container` (hidden until a scanned layer's channel is shown).
 *
 * @example
 *   const examples = createExamples(detail.element, ctx);
 */
export function createExamples(container: HTMLElement, ctx: ExamplesContext): Examples {
  const element = el("div", "fm-examples");
  element.setAttribute("aria-label", "Dataset examples");
  element.hidden = true;
  const title = el("div", "fm-section-title", "Top dataset examples");
  const caption = el("div", "fm-caption");
  const message = el("div", "fm-examples-message");
  message.setAttribute("role", "status");
  const list = el("ol", "fm-examples-list");
  element.append(title, caption, message, list);
  container.append(element);

  /** The (layer, channel) wanted, under the scan it belongs to; "" when none. */
  let wanted = "";
  let shownKey = "";
  let scanRef: ScanInfo | null = null;
  /** A click is making an image the input: its index and the revision it was sent under. */
  let using: { index: number; revision: number } | null = null;
  let current: ExamplesResult | null = null;

  function setMessage(text: string, isError = false): void {
    message.textContent = text;
    message.hidden = text === "";
    message.classList.toggle("fm-error-text", isError);
  }

  function setState(state: "loading" | "ready" | "error" | "busy"): void {
    element.dataset.state = state;
    element.setAttribute("aria-busy", String(state === "loading" || state === "busy"));
    list.classList.toggle("fm-stale", state === "loading" || state === "busy");
  }

  function use(e: DatasetExample): void {
    if (using !== null) return;
    using = { index: e.index, revision: ctx.revision() };
    setState("busy");
    setMessage(`Making dataset image #${e.index} the input…`);
    ctx.source.useExample(e.index).then(
      () => finishUsing(),
      (err: unknown) => {
        if (isDropped(err)) return finishUsing();
        using = null;
        setState(current === null ? "error" : "ready");
        setMessage(`Could not show image #${e.index}: ${(err as Error).message}`, true);
      },
    );
  }

  /** The kernel re-ran on the image (a new revision): the section is usable again. */
  function finishUsing(): void {
    if (using === null || ctx.revision() === using.revision) return;
    using = null;
    setMessage("");
    setState(current === null ? "loading" : "ready");
  }

  function render(result: ExamplesResult, scan: ScanInfo): void {
    current = result;
    caption.textContent = examplesCaption(result.examples.length, scan, result.crops);
    list.classList.toggle("fm-examples-text", !result.crops);
    list.replaceChildren(
      ...result.examples.map((e, rank) => {
        const item = el("li", "fm-example");
        // A saved file has no kernel to re-run the model on the example.
        const canUse = scan.crops && ctx.source.live;
        const body = canUse ? el("button", "fm-example-button") : el("div", "fm-example-button");
        if (body instanceof HTMLButtonElement) {
          body.type = "button";
          body.addEventListener("click", () => use(e));
        }
        body.setAttribute("aria-label", `Example ${rank + 1}: image #${e.index}`);
        body.title = canUse ? `${describe(e)}. Click to make it the input.` : describe(e);
        if (e.crop !== null) {
          const canvas = el("canvas", "fm-pixelated fm-example-crop");
          canvas.style.width = canvas.style.height = `${THUMB_PX}px`;
          canvas.style.imageRendering = "pixelated";
          drawCrop(canvas, e);
          body.append(canvas);
        }
        const value = el("span", "fm-example-value", formatValue(e.value));
        const meta = el("span", "fm-example-meta", `#${e.index}${e.label === null ? "" : ` · ${e.label}`}`);
        body.append(value, meta);
        item.append(body);
        return item;
      }),
    );
    if (result.examples.length === 0) setMessage("No examples: the scan saw no image for this channel.");
    else setMessage(result.crops ? "" : result.note || "no crops");
    if (using === null) setState("ready");
  }

  function fetch(layer: string, channel: number, scan: ScanInfo, key: string): void {
    wanted = key;
    setState("loading");
    if (current === null || list.childElementCount === 0) setMessage(`Loading the top examples of channel ${channel}…`);
    ctx.source.examples(layer, channel).then(
      (result) => {
        if (wanted !== key) return;
        shownKey = key;
        render(result, scan);
        if (using !== null) setMessage(`Making dataset image #${using.index} the input…`);
      },
      (e: unknown) => {
        if (wanted !== key) return;
        if (isDropped(e)) {
          // A new capture (the example just clicked) made the reply stale; the examples do not depend on it.
          if (e.reason === "stale") fetch(layer, channel, scan, key);
          return;
        }
        wanted = "";
        current = null;
        list.replaceChildren();
        setState("error");
        setMessage(`Could not load the dataset examples of channel ${channel}: ${(e as Error).message}`, true);
      },
    );
  }

  return {
    element,
    show(layer: string | null, channel: number | null): void {
      if (using !== null) finishUsing();
      const scan = ctx.scan();
      if (scan === null || layer === null || channel === null || !scan.layers.includes(layer)) {
        element.hidden = true;
        wanted = "";
        return;
      }
      element.hidden = false;
      if (scan !== scanRef) {
        scanRef = scan;
        shownKey = wanted = "";
      }
      const key = JSON.stringify([layer, channel]);
      if (key === shownKey || key === wanted) return;
      fetch(layer, channel, scan, key);
    },
    destroy(): void {
      wanted = "";
      element.remove();
    },
  };
}
