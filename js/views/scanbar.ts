/**
 * The dataset bar, shown when the widget has a dataset scan: how many images it covers, the class
 * picker (`scan_label`: tiles then show each channel's selectivity for it) and the group-audit pair
 * picker (`scan_pair`: two labels compared across the dataset, with their counts and the channel whose
 * Cohen's d is largest), and under it, with a data source, one row per label of the pair with its image
 * count and small pictures of its example images (clicking one makes it the input). Labels are text:
 * only `textContent` touches them.
 *
 * @example
 *   const bar = createScanBar(root, { onLabel: (l) => store.set({ scan_label: l }), onPair: (p) => store.set({ scan_pair: p }) });
 *   bar.update({ info: store.get("scan_info"), label: null, pair: [], layer: "conv2", scan: shown.scan });
 */
import { el } from "../dom";
import type { LayerScan, ScanInfo } from "../protocol";
import { formatValue } from "../scale";
import { createGroupPictures, type GroupPictures, type GroupPicturesContext } from "./grouppictures";
import { strongestChannel } from "./groups";

export interface ScanBarState {
  /** The `scan_info` trait; null hides the bar. */
  info: ScanInfo | null;
  /** The `scan_label` trait. */
  label: string | null;
  /** The `scan_pair` trait. */
  pair: readonly string[];
  /** The layer shown, and its reply's scan part when it came (null: not scanned, or not loaded yet). */
  layer: string;
  scan: LayerScan | null;
}

export interface ScanBarHandlers {
  onLabel(label: string | null): void;
  onPair(pair: string[]): void;
}

export interface ScanBar {
  readonly element: HTMLElement;
  update(state: ScanBarState): void;
  destroy(): void;
}

const NONE = "";

/**
 * The channel with the largest finite value (the first one on ties), or null.
 *
 * @example
 *   mostSelective(new Float32Array([0.1, 0.8, -0.9])); // { channel: 1, value: 0.8 }
 */
export function mostSelective(values: Float32Array): { channel: number; value: number } | null {
  let channel = -1;
  for (let c = 0; c < values.length; c++) {
    if (Number.isFinite(values[c]) && (channel < 0 || values[c] > values[channel])) channel = c;
  }
  return channel < 0 ? null : { channel, value: values[channel] };
}

function picker(label: string): HTMLSelectElement {
  const s = el("select", "fm-select");
  s.setAttribute("aria-label", label);
  s.title = label;
  return s;
}

/** Replaces a select's options with "(none)" and `labels`, when they differ from what it lists. */
function fillOptions(s: HTMLSelectElement, labels: readonly string[]): void {
  const want = [NONE, ...labels];
  if (s.options.length === want.length && [...s.options].every((o, i) => o.value === want[i])) return;
  s.replaceChildren(
    ...want.map((value) => {
      const o = document.createElement("option");
      o.value = value;
      o.textContent = value === NONE ? "(none)" : value;
      return o;
    }),
  );
}

/**
 * Builds the dataset bar inside `container` (hidden while the widget has no scan).
 *
 * @example
 *   const bar = createScanBar(root, handlers, { source, revision: () => store.get("revision") });
 */
export function createScanBar(
  container: HTMLElement,
  handlers: ScanBarHandlers,
  pictures?: GroupPicturesContext,
): ScanBar {
  const element = el("div", "fm-groups fm-scanbar");
  element.setAttribute("aria-label", "Dataset scan");
  element.hidden = true;
  const title = el("span", "fm-field-label", "Dataset");
  const summary = el("span", "fm-groups-counts");

  const classField = el("label", "fm-field");
  const classSelect = picker("Dataset class");
  classSelect.title = "Tiles show each channel's selectivity for this class (in [-1, 1])";
  classField.append(el("span", "fm-field-label", "Class"), classSelect);
  const classTop = el("span", "fm-groups-top");

  const pairBox = el("span", "fm-field fm-scan-pair");
  pairBox.setAttribute("role", "group");
  pairBox.setAttribute("aria-label", "Dataset groups");
  pairBox.title = "Two labels compared across the dataset; d > 0 where the first activates more";
  const first = picker("First dataset group");
  const second = picker("Second dataset group");
  pairBox.append(el("span", "fm-field-label", "Compare"), first, el("span", "fm-scan-vs", "vs"), second);
  const counts = el("span", "fm-groups-counts");
  const top = el("span", "fm-groups-top");
  element.append(title, summary, classField, classTop, pairBox, counts, top);
  container.append(element);
  const groupRows: GroupPictures | null = pictures === undefined ? null : createGroupPictures(element, pictures);

  let labels: readonly string[] = [];
  classSelect.addEventListener("change", () => handlers.onLabel(classSelect.value === NONE ? null : classSelect.value));
  /** A label picked on one side: the other side follows (any other label) so that a pair is always sent whole. */
  const onPick = (mine: HTMLSelectElement, other: HTMLSelectElement): void => {
    if (mine.value === NONE) {
      handlers.onPair([]);
      return;
    }
    if (other.value === NONE || other.value === mine.value) {
      other.value = labels.find((l) => l !== mine.value) ?? NONE;
    }
    if (other.value === NONE) return;
    handlers.onPair([first.value, second.value]);
  };
  first.addEventListener("change", () => onPick(first, second));
  second.addEventListener("change", () => onPick(second, first));

  return {
    element,
    update(state: ScanBarState): void {
      const info = state.info;
      element.hidden = info === null;
      if (info === null) {
        groupRows?.show(null);
        return;
      }
      labels = info.labels;
      const covered = info.layers.includes(state.layer);
      summary.textContent =
        `${info.images.toLocaleString("en-US")} images · top ${info.k} per channel` +
        (info.complete ? "" : " · interrupted") +
        (covered ? "" : ` · "${state.layer}" not scanned`);
      summary.title = `Scanned layers: ${info.layers.join(", ")}`;

      const canPick = labels.length >= 2;
      classField.hidden = pairBox.hidden = !canPick;
      fillOptions(classSelect, labels);
      classSelect.value = state.label ?? NONE;
      const best = state.scan?.selectivity == null ? null : mostSelective(state.scan.selectivity);
      classTop.hidden = !canPick || state.label === null;
      classTop.textContent =
        best === null ? "" : `most selective: channel ${best.channel} (${formatValue(best.value)})`;

      fillOptions(first, labels);
      fillOptions(second, labels);
      if (state.pair.length === 2) {
        first.value = state.pair[0];
        second.value = state.pair[1];
      } else if (document.activeElement !== first && document.activeElement !== second) {
        first.value = second.value = NONE;
      }
      const scan = state.scan;
      const pairShown = canPick && state.pair.length === 2 && scan !== null && scan.pair.length === 2;
      counts.hidden = top.hidden = !pairShown;
      if (pairShown) {
        const [a, b] = scan.pair;
        counts.textContent = `n = ${(scan.counts[a] ?? 0).toLocaleString("en-US")} vs ${(scan.counts[b] ?? 0).toLocaleString("en-US")}`;
        const d = scan.effect === null ? null : strongestChannel(scan.effect);
        top.textContent =
          d === null
            ? "no channel differs (d undefined)"
            : `strongest: channel ${d.channel}, d = ${d.d > 0 ? "+" : ""}${formatValue(d.d)}`;
        top.title = "Cohen's d of the channel's per-image mean activation between the two labels, over the dataset";
      }
      groupRows?.show(pairShown ? { info, pair: scan.pair, counts: scan.counts, examples: scan.examples ?? {} } : null);
    },
    destroy(): void {
      groupRows?.destroy();
      element.remove();
    },
  };
}
