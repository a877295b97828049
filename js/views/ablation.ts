/**
 * The ablation row above the grid: what the last ablation did to the shown sample's prediction
 * ("Zeroed channels 3, 7 of layer1.0.conv1: Egyptian cat 71.2% → 40.1% (−31.1 pts) · now tabby 45.0%"),
 * with a dismiss button, and the "Ablate selected" button while tiles are selected. The ablation panel
 * (panels/ablation.ts) sends the request and keeps its pending / error state; this module only shows it.
 * Names are text.
 *
 * @example
 *   const bar = createAblationBar(root, { onAblate: send, onDismiss: clear, onShowLayer: (n) => setLayer(n) });
 *   bar.update({ ablation: store.get("ablation"), sample: 0, numSamples: 1, layer: "conv1", selected: [3], pending: false, error: "" });
 */

import { el } from "../dom";
import type { Ablation, AblationChange } from "../protocol";

/** Everything the row shows. */
export interface AblationBarState {
  ablation: Ablation | null;
  sample: number;
  numSamples: number;
  /** The layer the grid shows (the selection belongs to it). */
  layer: string;
  selected: readonly number[];
  /** An ablate request is at the kernel. */
  pending: boolean;
  /** The last ablate request's error, or "". */
  error: string;
  /** The last ablate request was cancelled (the view's Cancel); absent means it was not. */
  cancelled?: boolean;
  /** Whether a kernel can ablate (false in a saved HTML file); absent means it can. */
  live?: boolean;
}

export interface AblationHandlers {
  /** "Ablate selected": zero the selected channels of the shown layer. */
  onAblate(): void;
  /** The × of the result or of the error. */
  onDismiss(): void;
  /** Show the ablated layer (offered when another layer is shown). */
  onShowLayer(name: string): void;
}

export interface AblationBar {
  readonly element: HTMLElement;
  update(state: AblationBarState): void;
  destroy(): void;
}

/** Up to this many channel numbers are listed; beyond, the count and the first few. */
const LISTED = 6;

/**
 * How the zeroed channels read in a sentence.
 *
 * @example
 *   channelList([3]);          // "channel 3"
 *   channelList([3, 7, 12]);   // "channels 3, 7, 12"
 *   channelList(range(0, 20)); // "20 channels (0, 1, 2, 3, 4, 5, …)"
 */
export function channelList(channels: readonly number[]): string {
  if (channels.length === 1) return `channel ${channels[0]}`;
  if (channels.length <= LISTED) return `channels ${channels.join(", ")}`;
  return `${channels.length} channels (${channels.slice(0, LISTED).join(", ")}, …)`;
}

/** A probability as a percentage with one decimal. */
function percent(p: number): string {
  return `${(100 * p).toFixed(1)}%`;
}

/**
 * A change of probability in percentage points, signed with a true minus sign.
 *
 * @example
 *   formatPoints(-0.311); // "−31.1 pts"
 *   formatPoints(0.0004); // "0.0 pts"
 */
export function formatPoints(change: number): string {
  const points = Math.round(change * 1000) / 10;
  if (points === 0) return "0.0 pts";
  return `${points > 0 ? "+" : "−"}${Math.abs(points).toFixed(1)} pts`;
}

/** One sample's outcome in three pieces, so the view can colour the change. */
export interface ChangeParts {
  /** "Egyptian cat 71.2% → 40.1%": the class predicted before, its probability before → after. */
  head: string;
  /** "−31.1 pts" */
  points: string;
  /** " · now tabby 45.0%" when the top class changed, else " · still the top class". */
  tail: string;
  trend: "down" | "up" | "flat";
}

/**
 * One sample's outcome: the class predicted before, its probability before → after (and the change), and
 * the new top class when it changed.
 *
 * @example
 *   changeParts(change).head; // "Egyptian cat 71.2% → 40.1%"
 */
export function changeParts(c: AblationChange): ChangeParts {
  const before = c.label_before ?? `class ${c.top_before}`;
  const after = c.label_after ?? `class ${c.top_after}`;
  const points = formatPoints(c.prob_change);
  const moved = c.top_after !== c.top_before;
  return {
    head: `${before} ${percent(c.prob_before)} → ${percent(c.prob_before + c.prob_change)}`,
    points,
    tail: moved ? ` · now ${after} ${percent(c.prob_after)}` : " · still the top class",
    trend: moved || points.startsWith("−") ? "down" : points.startsWith("+") ? "up" : "flat",
  };
}

/**
 * {@link changeParts} as one line.
 *
 * @example
 *   changeSummary(change); // "Egyptian cat 71.2% → 40.1% (−31.1 pts) · now tabby 45.0%"
 */
export function changeSummary(c: AblationChange): string {
  const { head, points, tail } = changeParts(c);
  return `${head} (${points})${tail}`;
}

function button(className: string, text: string, label: string, onClick: () => void): HTMLButtonElement {
  const b = el("button", `fm-button ${className}`, text);
  b.type = "button";
  b.setAttribute("aria-label", label);
  b.title = label;
  b.addEventListener("click", onClick);
  return b;
}

/**
 * Builds the ablation row inside `container`; it is hidden while there is nothing to show.
 *
 * @example
 *   const bar = createAblationBar(root, handlers);
 */
export function createAblationBar(container: HTMLElement, handlers: AblationHandlers): AblationBar {
  const element = el("div", "fm-ablation");
  element.setAttribute("aria-label", "Ablation");
  element.hidden = true;

  const result = el("div", "fm-ablation-result");
  result.setAttribute("role", "status");
  const what = el("span", "fm-ablation-what");
  const layer = el("span", "fm-ablation-layer");
  let ablatedLayer = "";
  const show = button("fm-link", "Show that layer", "Show the ablated layer", () => handlers.onShowLayer(ablatedLayer));
  const effect = el("span", "fm-ablation-effect");
  const effectHead = document.createTextNode("");
  const points = el("span", "fm-ablation-points");
  const effectTail = el("span", "fm-ablation-tail");
  effect.append(effectHead, points, effectTail);
  result.append(what, layer, effect);

  const error = el("div", "fm-ablation-error");
  const cancelled = el("div", "fm-ablation-cancelled", "Ablation cancelled: the model is as it was.");
  cancelled.setAttribute("role", "status");
  cancelled.hidden = true;

  const selection = el("span", "fm-ablation-selection");
  const ablate = button("fm-ablate", "Ablate selected", "Ablate selected channels", () => handlers.onAblate());
  const dismiss = button("fm-dismiss", "×", "Dismiss ablation", () => handlers.onDismiss());
  const actions = el("div", "fm-ablation-actions");
  actions.append(show, selection, ablate, dismiss);
  element.append(result, error, cancelled, actions);
  container.append(element);

  return {
    element,
    update(s: AblationBarState): void {
      const a = s.ablation;
      result.hidden = a === null;
      if (a !== null) {
        ablatedLayer = a.layer;
        what.textContent = `Zeroed ${channelList(a.channels)} of `;
        what.title = `Channels ${a.channels.join(", ")}`;
        layer.textContent = a.layer;
        const change = a.changes?.[s.sample];
        const sample = s.numSamples > 1 ? ` (sample #${s.sample})` : "";
        let parts: ChangeParts | null = null;
        if (a.changes === null) {
          effectHead.textContent = ": the model outputs no (N, classes) scores, so there is no prediction to compare.";
        } else if (change === undefined) {
          effectHead.textContent = `: no result for sample #${s.sample}.`;
        } else {
          parts = changeParts(change);
          effectHead.textContent = `${sample}: ${parts.head} `;
        }
        points.textContent = parts === null ? "" : `(${parts.points})`;
        points.dataset.trend = parts?.trend ?? "none";
        effectTail.textContent = parts?.tail ?? "";
        effectTail.classList.toggle(
          "fm-ablation-moved",
          change !== undefined && change.top_after !== change.top_before,
        );
      }
      show.hidden = a === null || a.layer === s.layer;
      error.hidden = s.error === "";
      error.textContent = s.error === "" ? "" : `Ablation failed: ${s.error}`;
      // Only a shown error is an alert: a hidden one must not be what assistive tech (or a query) finds.
      if (s.error === "") error.removeAttribute("role");
      else error.setAttribute("role", "alert");

      // A saved file (no kernel) shows an ablation made before saving, but offers none.
      const n = s.live === false ? 0 : s.selected.length;
      selection.hidden = ablate.hidden = n === 0;
      selection.textContent = n === 0 ? "" : `${n} ${n === 1 ? "channel" : "channels"} selected`;
      ablate.disabled = s.pending;
      ablate.textContent = s.pending ? "Ablating…" : "Ablate selected";
      ablate.title =
        n === 0 ? "" : `Zero ${channelList(s.selected)} of ${s.layer}, re-run the model and compare the prediction`;
      const stopped = s.cancelled === true && s.error === "";
      cancelled.hidden = !stopped;
      dismiss.hidden = a === null && s.error === "" && !stopped;
      element.hidden = a === null && s.error === "" && n === 0 && !stopped;
    },
    destroy(): void {
      element.remove();
    },
  };
}
