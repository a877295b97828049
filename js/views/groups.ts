/**
 * The group comparison bar (activation bias audit): which two groups are compared, how many inputs
 * each has, the channel that differs most (Cohen's d from the `effect` array of the layer reply) and
 * buttons that show an example input of either group.
 *
 * @example
 *   const bar = createGroupBar(root, { onPair: (p) => setTrait("group_pair", p), onSample: (i) => setTrait("sample", i) });
 *   bar.update({ groups, pair: store.get("group_pair"), info: data.groups, effect: data.effect });
 */

import { el } from "../dom";
import type { GroupsInfo } from "../protocol";
import { formatValue } from "../scale";

/**
 * The distinct group labels, in order of first appearance.
 *
 * @example
 *   distinctLabels(["cat", "dog", "cat"]); // ["cat", "dog"]
 */
export function distinctLabels(groups: readonly string[]): string[] {
  return [...new Set(groups)];
}

/**
 * The pairs a user can compare: every two labels in order of appearance, plus `current` when it is a
 * pair not in that list (e.g. the reversed order, set from Python).
 *
 * @example
 *   pairOptions(["a", "b", "c"], []); // [["a", "b"], ["a", "c"], ["b", "c"]]
 */
export function pairOptions(labels: readonly string[], current: readonly string[]): [string, string][] {
  const pairs: [string, string][] = [];
  for (let i = 0; i < labels.length; i++)
    for (let j = i + 1; j < labels.length; j++) pairs.push([labels[i], labels[j]]);
  if (current.length === 2 && !pairs.some(([a, b]) => a === current[0] && b === current[1]))
    pairs.push([current[0], current[1]]);
  return pairs;
}

/**
 * The channel with the largest |d| (the first one on ties), or null when no effect is finite.
 *
 * @example
 *   strongestChannel(new Float32Array([0.2, -1.5, 1.1])); // { channel: 1, d: -1.5 }
 */
export function strongestChannel(effect: Float32Array): { channel: number; d: number } | null {
  let channel = -1;
  for (let c = 0; c < effect.length; c++) {
    if (Number.isFinite(effect[c]) && (channel < 0 || Math.abs(effect[c]) > Math.abs(effect[channel]))) channel = c;
  }
  return channel < 0 ? null : { channel, d: effect[channel] };
}

export interface GroupBarState {
  /** The `groups` trait: one label per sample, or empty (the bar hides). */
  groups: readonly string[];
  /** The `group_pair` trait. */
  pair: readonly string[];
  /** `meta.groups` of the shown layer's reply, when it came. */
  info: GroupsInfo | null;
  /** `effect` of the shown layer's reply, when it came. */
  effect: Float32Array | null;
}

export interface GroupBar {
  readonly element: HTMLElement;
  update(state: GroupBarState): void;
  destroy(): void;
}

/**
 * Builds the group bar inside `container` (hidden while there are no groups).
 *
 * @example
 *   const bar = createGroupBar(root, handlers);
 */
export function createGroupBar(
  container: HTMLElement,
  handlers: { onPair(pair: [string, string]): void; onSample(index: number): void },
): GroupBar {
  const element = el("div", "fm-groups");
  element.hidden = true;
  const pairSelect = el("select", "fm-select");
  pairSelect.setAttribute("aria-label", "Group pair");
  pairSelect.title = "The two groups compared; d > 0 where the first group activates more";
  pairSelect.addEventListener("change", () => {
    const pair = JSON.parse(pairSelect.value) as [string, string];
    handlers.onPair(pair);
  });
  const label = el("span", "fm-field-label", "Groups");
  const counts = el("span", "fm-groups-counts");
  const top = el("span", "fm-groups-top");
  const examples = el("span", "fm-groups-examples");
  element.append(label, pairSelect, counts, top, examples);
  container.append(element);

  let signature = "";

  return {
    element,
    update(state: GroupBarState): void {
      element.hidden = state.groups.length === 0;
      if (element.hidden) return;
      const labels = distinctLabels(state.groups);
      const pair: readonly string[] = state.info?.pair ?? (state.pair.length === 2 ? state.pair : labels.slice(0, 2));
      const options = pairOptions(labels, pair);
      const sig = JSON.stringify(options);
      if (sig !== signature) {
        signature = sig;
        pairSelect.replaceChildren(
          ...options.map((p) => {
            const o = document.createElement("option");
            o.value = JSON.stringify(p);
            o.textContent = `${p[0]} vs ${p[1]}`;
            return o;
          }),
        );
      }
      pairSelect.value = JSON.stringify(pair);
      const count = (g: string): number => state.info?.counts[g] ?? state.groups.filter((x) => x === g).length;
      counts.textContent = pair.length === 2 ? `n = ${count(pair[0])} vs ${count(pair[1])}` : "";

      const best = state.effect === null ? null : strongestChannel(state.effect);
      top.textContent =
        best === null
          ? state.info === null
            ? ""
            : "no channel differs (d undefined)"
          : `strongest: channel ${best.channel}, d = ${best.d > 0 ? "+" : ""}${formatValue(best.d)}`;
      top.title = "Cohen's d of the channel's mean activation between the two groups";
      examples.replaceChildren();
      for (const g of pair) {
        const sample = state.info?.examples[g]?.[0];
        const b = el("button", "fm-button", `example of ${g}`);
        b.type = "button";
        b.disabled = sample === undefined;
        b.title = sample === undefined ? `No input of group ${g}` : `Show input #${sample} (group ${g})`;
        if (sample !== undefined) b.addEventListener("click", () => handlers.onSample(sample));
        examples.append(b);
      }
    },
    destroy(): void {
      element.remove();
    },
  };
}
