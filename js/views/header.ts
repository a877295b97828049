/**
 * The header: the one place that names the layer (name, module type, shape, a loading mark, downsample
 * badge), the before/after-activation toggle, the health summary and the top prediction. Names are text:
 * only `textContent` touches them.
 *
 * @example
 *   const header = createHeader(root, { onLayer: (name) => store.set({ layer: name }) });
 *   header.update(meta, data.downsample, partner);
 */
import { el } from "../dom";
import { formatPercent, formatShape, predictionLabel } from "../format";
import type { LayerMeta, Prediction } from "../protocol";

/** What the header says about a layer from the dataset scan: its images and the channels dead across them. */
export interface ScanHealth {
  images: number;
  dead: number;
}

/**
 * The header's health line from a layer's batch-wide counts and, when the layer was scanned, the
 * channels dead across the dataset (batch-dead channels are then "zero on this input").
 *
 * @example
 *   healthSummary(meta); // "12 of 64 channels dead · 2 with NaN/Inf"
 *   healthSummary(meta, { images: 1000, dead: 12 }); // "12 of 64 dead across 1,000 images · 75 zero on this input"
 */
export function healthSummary(meta: LayerMeta, scan: ScanHealth | null = null): string {
  const c = meta.shape[1];
  const n = meta.shape[0];
  const parts: string[] = [];
  if (scan !== null) {
    parts.push(`${scan.dead} of ${c} dead across ${scan.images.toLocaleString("en-US")} images`);
    if (meta.dead > 0) parts.push(`${meta.dead} zero on ${n === 1 ? "this input" : `these ${n} inputs`}`);
  } else if (meta.dead > 0) parts.push(`${meta.dead} of ${c} channels dead`);
  if (meta.constant > 0) parts.push(`${meta.constant} constant`);
  if (meta.nonfinite > 0) parts.push(`${meta.nonfinite} with NaN/Inf`);
  return parts.length > 0 ? parts.join(" · ") : `all ${c} channels alive`;
}

export interface Header {
  readonly element: HTMLElement;
  /**
   * Shows a layer's identity and health; `downsample` > 1 adds a badge saying the grid is pooled;
   * `partner` is the layer's activation partner (`post` or `pre`), offered as a toggle.
   */
  update(meta: LayerMeta | undefined, downsample: number, partner?: LayerMeta, scan?: ScanHealth | null): void;
  /** Marks the named layer as not drawn yet (a small spinner, `aria-busy`), or clears the mark. */
  setPending(pending: boolean): void;
  /** The model's top prediction for the shown sample ("Egyptian cat 72%"); null hides it. */
  setPrediction(top: Prediction | null): void;
  /** Marks maps captured with the model in training mode (they depend on the batch, dropout is random). */
  setTraining(training: boolean): void;
}

/**
 * How a layer's maps were read from what its module computed, for a badge; null for plain (N, C, H, W).
 *
 * @example
 *   layoutText({ ...meta, layout: "tokens", extra_tokens: 1 }); // {text: "patch tokens", title: "…1 class/register token…"}
 */
export function layoutText(meta: LayerMeta | undefined): { text: string; title: string } | null {
  if ((meta?.layout === "ncthw" || meta?.layout === "nthwc") && meta.frames !== undefined) {
    const last = meta.layout === "nthwc" ? ", channels last: (N, T, H, W, C)" : "";
    return {
      text: `frame ${meta.frame ?? 0} of ${meta.frames}`,
      title: `A video layer's (N, C, T, H, W) output${last}, with ${meta.frames} frames: shown one frame at a time (the Frame slider picks it; a layer with fewer frames than the clip shows the one covering the chosen input frame).`,
    };
  }
  if (meta?.layout === "nhwc") {
    return {
      text: "channels-last",
      title:
        "The module computed an (N, H, W, C) tensor (a Linear or LayerNorm over the last dimension); shown as its C channels.",
    };
  }
  if (meta?.layout === "tokens") {
    const extra = meta.extra_tokens ?? 0;
    if ((meta.frames ?? 0) > 0) {
      return {
        text: `tokens · frame ${meta.frame ?? 0} of ${meta.frames}`,
        title: `A video transformer block's tokens (N, ${extra > 0 ? `${extra} + ` : ""}T·H·W, C) with T = ${meta.frames}, shown as C maps of one frame's H × W patch grid (the Frame slider picks it).`,
      };
    }
    const left = extra > 0 ? `; ${extra} class/register token${extra === 1 ? "" : "s"} not shown` : "";
    return {
      text: "patch tokens",
      title: `A transformer block's tokens (N, ${extra > 0 ? `${extra} + ` : ""}H·W, C), shown as C maps of the H × W patch grid${left}.`,
    };
  }
  return null;
}

/**
 * The block names a layer also answers to, shortest first ("= layer4"; "= layer4 +1" for more).
 *
 * @example
 *   aliasText(["layer4", "layer4.2"]); // "= layer4 +1"
 */
export function aliasText(aliases: readonly string[]): string {
  if (aliases.length === 0) return "";
  const first = [...aliases].sort((a, b) => a.length - b.length)[0];
  return aliases.length === 1 ? `= ${first}` : `= ${first} +${aliases.length - 1}`;
}

/**
 * The text of the before/after-activation toggle: forward to the activation a conv/norm layer feeds
 * ("after ReLU6 →"), back from an activation to its input ("← before activation").
 *
 * @example
 *   partnerLabel(conv, relu); // "after ReLU →"
 */
export function partnerLabel(meta: LayerMeta, partner: LayerMeta): string {
  return meta.post === partner.name ? `after ${partner.type} →` : "← before activation";
}

/**
 * The line above the grid, the one place that names the layer: name, module type, shape, a "loading" mark
 * until the grid shows it, downsample badge, the before/after-activation toggle and the health summary.
 *
 * @example
 *   const header = createHeader(root, { onLayer: (name) => store.set({ layer: name }) });
 *   header.update(meta, data.downsample, metaOf(meta.post ?? meta.pre ?? ""));
 */
export function createHeader(container: HTMLElement, handlers: { onLayer(name: string): void }): Header {
  const element = el("div", "fm-header");
  const name = el("span", "fm-title");
  const alias = el("span", "fm-alias");
  const pending = el("span", "fm-header-pending");
  pending.title = "Loading this layer";
  pending.hidden = true;
  const type = el("span", "fm-badge");
  const layout = el("span", "fm-badge");
  layout.hidden = true;
  const shape = el("span", "fm-shape");
  const down = el("span", "fm-badge fm-badge-warn");
  const toggle = el("button", "fm-button fm-partner");
  toggle.type = "button";
  toggle.hidden = true;
  let target = "";
  toggle.addEventListener("click", () => {
    if (target !== "") handlers.onLayer(target);
  });
  const health = el("span", "fm-health");
  const training = el("span", "fm-badge fm-badge-warn", "training mode");
  training.hidden = true;
  training.title =
    "The model ran in training mode: BatchNorm used this batch's statistics and dropout was random, so the maps " +
    "depend on the other inputs and change from run to run. Call model.eval() and re-run for per-image maps.";
  const prediction = el("span", "fm-prediction");
  prediction.hidden = true;
  element.append(name, alias, pending, type, layout, shape, down, toggle, health, training, prediction);
  container.append(element);
  return {
    element,
    update(meta: LayerMeta | undefined, downsample: number, partner?: LayerMeta, scan: ScanHealth | null = null): void {
      name.textContent = meta?.name ?? "";
      // The header stays on one line: a cut name, health line or prediction shows whole on hover.
      name.title = meta?.name ?? "";
      alias.textContent = aliasText(meta?.aliases ?? []);
      alias.title = (meta?.aliases ?? []).length > 0 ? `Also the output of ${(meta?.aliases ?? []).join(", ")}` : "";
      alias.hidden = alias.textContent === "";
      type.textContent = meta?.type ?? "";
      type.hidden = meta === undefined;
      const read = layoutText(meta);
      layout.textContent = read?.text ?? "";
      layout.title = read?.title ?? "";
      layout.hidden = read === null;
      shape.textContent = meta === undefined ? "" : formatShape(meta.shape);
      down.hidden = !(downsample > 1);
      down.textContent = `1/${downsample} resolution`;
      down.title = "The grid shows average-pooled maps to fit the budget; the channel view is exact.";
      target = meta !== undefined && partner !== undefined ? partner.name : "";
      toggle.hidden = target === "";
      if (meta !== undefined && partner !== undefined) {
        toggle.textContent = partnerLabel(meta, partner);
        toggle.title = `Show ${partner.name} (${partner.type}) with the same zoom and channel`;
      }
      health.textContent = meta === undefined ? "" : healthSummary(meta, scan);
      health.title =
        scan === null
          ? health.textContent
          : `${health.textContent}. Dead across the dataset: never > 0 on any scanned image. Zero on this input: every value of the map is 0 here.`;
      health.classList.toggle(
        "fm-health-bad",
        meta !== undefined && meta.dead + meta.constant + meta.nonfinite + (scan?.dead ?? 0) > 0,
      );
    },
    setPrediction(top: Prediction | null): void {
      prediction.hidden = top === null;
      prediction.textContent = top === null ? "" : `${predictionLabel(top)} ${formatPercent(top.prob)}`;
      prediction.title = top === null ? "" : `${prediction.textContent}: the model's top prediction for this input`;
    },
    setTraining(on: boolean): void {
      training.hidden = !on;
    },
    setPending(on: boolean): void {
      pending.hidden = !on;
      element.classList.toggle("fm-header-loading", on);
      if (on) element.setAttribute("aria-busy", "true");
      else element.removeAttribute("aria-busy");
    },
  };
}
