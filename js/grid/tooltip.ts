/**
 * The grid's tooltip: what a tile is (channel, health marks, statistics, badge, ablation) and, under the
 * pointer, the pixel and its approximate value; placed next to the point, inside the grid.
 *
 * @example
 *   const tooltip = createTooltip(element);
 *   tooltip.show(describeTile(data, 3, hit, marks), x, y);
 */
import { FLAG_CONSTANT, FLAG_DATASET_DEAD, FLAG_DEAD, FLAG_NONFINITE, statOf } from "../protocol";
import { formatValue } from "../scale";
import type { HitInfo, LayerData } from "./grid";

/** What the grid marks on tiles besides the data. */
export interface TileMarks {
  badges: Float32Array | null;
  badgeLabel: string;
  ablated: ReadonlySet<number>;
  /** Images of the dataset scan that covers the layer (for the dead-across-the-dataset line); null: no scan. */
  scanImages: number | null;
}

/**
 * The tooltip's lines for a channel; with `hit`, the pixel under the pointer too.
 *
 * @example
 *   describeTile(data, 0, null, marks); // ["Channel 0 · dead", "min 0 · max 0 · mean 0", ...]
 */
export function describeTile(data: LayerData, channel: number, hit: HitInfo | null, marks: TileMarks): string[] {
  const stat = (field: Parameters<typeof statOf>[2]): number => statOf(data.stats, channel, field);
  const flags = data.flags[channel];
  const health: string[] = [];
  if ((flags & FLAG_DATASET_DEAD) !== 0) health.push("dead across the dataset");
  else if ((flags & FLAG_DEAD) !== 0) health.push("dead");
  if ((flags & FLAG_CONSTANT) !== 0) health.push("constant");
  if ((flags & FLAG_NONFINITE) !== 0) health.push("has NaN/Inf");
  const lines = [
    `Channel ${channel}${health.length > 0 ? ` · ${health.join(" · ")}` : ""}`,
    `min ${formatValue(stat("min"))} · max ${formatValue(stat("max"))} · mean ${formatValue(stat("mean"))}`,
    `zeros ${formatValue(100 * stat("zeros"))}% · NaN ${stat("nan")} · Inf ${stat("inf")}`,
  ];
  if ((flags & FLAG_DATASET_DEAD) !== 0) {
    const n = marks.scanImages === null ? "any" : `0 of ${marks.scanImages.toLocaleString("en-US")}`;
    lines.push(`Dead across the dataset (${n} images > 0)`);
  } else if ((flags & FLAG_DEAD) !== 0) {
    lines.push("Dead on this batch: zero for every input of this batch");
  }
  if ((flags & FLAG_CONSTANT) !== 0) lines.push("Constant: one value everywhere, on every input of this batch");
  if (marks.badges !== null && channel < marks.badges.length) {
    lines.push(`${marks.badgeLabel} ${formatValue(marks.badges[channel])}`);
  }
  if (marks.ablated.has(channel)) lines.push("Zeroed in the last ablation");
  if (hit !== null) {
    const f = hit.downsample;
    const where =
      f > 1 ? `mean of ${f}×${f} at row ${hit.row * f}, col ${hit.col * f}` : `row ${hit.row}, col ${hit.col}`;
    lines.push(`${where}: ≈ ${formatValue(hit.value)} (8-bit; exact in the channel view)`);
  }
  return lines;
}

export interface Tooltip {
  readonly element: HTMLElement;
  /** Shows the lines near (x, y) CSS px of the grid, flipped to stay inside it. */
  show(lines: string[], x: number, y: number): void;
  hide(): void;
}

export function createTooltip(parent: HTMLElement): Tooltip {
  const element = document.createElement("div");
  element.className = "fm-grid-tooltip";
  element.setAttribute("role", "status");
  element.style.position = "absolute";
  element.style.pointerEvents = "none";
  element.hidden = true;
  return {
    element,
    show(lines, x, y) {
      element.replaceChildren(
        ...lines.map((text) => {
          const line = document.createElement("div");
          line.textContent = text;
          return line;
        }),
      );
      element.hidden = false;
      const tw = element.offsetWidth;
      const th = element.offsetHeight;
      const left = x + 14 + tw > parent.clientWidth ? Math.max(0, x - 14 - tw) : x + 14;
      const top = y + 14 + th > parent.clientHeight ? Math.max(0, y - 14 - th) : y + 14;
      element.style.left = `${left}px`;
      element.style.top = `${top}px`;
    },
    hide() {
      element.hidden = true;
    },
  };
}
