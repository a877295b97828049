/**
 * anywidget entry point: builds the store (traits and view state), the data source (the kernel; a saved HTML
 * file's embedded data in js/standalone.ts, through `mount`) and the panels (header, group bar, dataset bar,
 * controls, ablation row, status, grid, colorbar, Grad-CAM panel, channel view) in page order, subscribes each
 * panel to the store and returns the cleanup. The parts live in their own modules; this file only composes them.
 *
 * @example
 *   // anywidget loads the bundle and calls:
 *   const cleanup = widget.render({ model, el, signal });
 */
import type { RenderProps } from "@anywidget/types";
import { el } from "./dom";
import { ablationPanel } from "./panels/ablation";
import { colorbarPanel } from "./panels/colorbar";
import { controlsPanel } from "./panels/controls";
import { type DetailPanel, detailPanel } from "./panels/detail";
import { framesPanel } from "./panels/frames";
import { gradcamPanel } from "./panels/gradcam";
import { type GridPanel, gridPanel } from "./panels/grid";
import { groupsPanel } from "./panels/groups";
import { headerPanel } from "./panels/header";
import { layersController } from "./panels/layers";
import type { Panel, PanelContext } from "./panels/panel";
import { scanBarPanel } from "./panels/scanbar";
import { statusPanel } from "./panels/status";
import { stepsPanel } from "./panels/steps";
import type { Traits } from "./protocol";
import { type DataSource, KernelSource } from "./source";
import { Store, type StoreModel } from "./store";
import { watchTheme } from "./theme";

interface Part {
  destroy(): void;
}

/**
 * Every panel in page order (each view appends itself to its container when built), each handed to
 * `keep` as soon as it exists so that a later failure still frees it.
 */
function buildPanels(
  ctx: PanelContext,
  root: HTMLElement,
  keep: <P extends Panel>(panel: P) => P,
): { grid: GridPanel; detail: DetailPanel } {
  // The controller that picks the shown layer hears of each change first.
  keep(layersController(ctx));
  keep(headerPanel(ctx, root));
  keep(groupsPanel(ctx, root));
  keep(scanBarPanel(ctx, root));
  // The slider sits right under the layer name it changes; the ablation row right above the grid it marks.
  keep(controlsPanel(ctx, root));
  // Which weights: right under the layer slider, the other axis of what the grid shows.
  keep(stepsPanel(ctx, root));
  // Which frame of a clip: the other axis of a video model's maps.
  keep(framesPanel(ctx, root));
  keep(ablationPanel(ctx, root));
  const banner = el("div", "fm-banner");
  const main = el("div", "fm-main");
  const stage = el("div", "fm-stage");
  const barBox = el("div", "fm-colorbar");
  const readout = el("div", "fm-readout");
  main.append(stage, barBox);
  root.append(banner, main, readout);
  const grid = keep(gridPanel(ctx, stage, readout, root));
  keep(statusPanel(ctx, root, banner, stage));
  keep(colorbarPanel(ctx, barBox));
  // Below the grid, above the channel view: the heatmap is read against the tiles' weights.
  keep(gradcamPanel(ctx, root));
  const detail = keep(detailPanel(ctx, root, (c) => grid.focusTile(c)));
  return { grid, detail };
}

/**
 * Keys typed inside the widget: the channel view's arrows and Esc, Enter on the grid opens the tile under
 * the cursor; JupyterLab's shortcuts (Ctrl+S, Cmd+B, Shift+Enter runs the cell) pass through.
 */
function routeKeys(root: HTMLElement, ctx: PanelContext, grid: GridPanel, detail: DetailPanel): Part {
  const { store } = ctx;
  const onKey = (ev: KeyboardEvent): void => {
    if (ev.ctrlKey || ev.metaKey || ev.altKey || (ev.key === "Enter" && ev.shiftKey)) return;
    if (detail.handleKey(ev)) {
      ev.preventDefault();
    } else if (ev.key === "Enter" && grid.element?.contains(ev.target as Node)) {
      const shown = store.get("shown");
      const c = store.get("cursor") ?? (shown !== null && shown.channels > 0 ? 0 : null);
      if (c !== null) store.set({ channel: c });
      ev.preventDefault();
    } else if (ev.key === "Escape") {
      // Nothing to close: Esc goes on to JupyterLab (command mode).
      return;
    }
    // JupyterLab's shortcuts would otherwise take arrow keys and letters typed inside the widget.
    ev.stopPropagation();
  };
  root.addEventListener("keydown", onKey);
  return { destroy: () => root.removeEventListener("keydown", onKey) };
}

/**
 * Builds the view in `host` over a model (the anywidget model, or a saved file's local one) and the data
 * source `makeSource` makes for it; returns the cleanup, also run when `signal` aborts.
 *
 * @example
 *   const cleanup = mount(host, model, (store) => new EmbeddedSource(file, store));
 */
export function mount(
  host: HTMLElement,
  model: StoreModel,
  makeSource: (store: Store) => DataSource,
  signal?: AbortSignal,
): () => void {
  const parts: Part[] = [];
  let disposed = false;
  const root = el("div", "fmwidget");
  root.dataset.state = "loading";
  host.append(root);
  const cleanup = (): void => {
    if (disposed) return;
    disposed = true;
    // Last built first: listeners go before the parts they call into, the store last.
    for (const part of parts.reverse()) part.destroy();
    root.remove();
  };
  signal?.addEventListener("abort", cleanup, { once: true });

  try {
    const store = new Store(model);
    parts.push(store);
    const source = makeSource(store);
    parts.push(source);
    const ctx: PanelContext = { store, source };
    const { grid, detail } = buildPanels(ctx, root, (panel) => {
      parts.push(panel);
      store.subscribe((changed) => panel.update(changed));
      return panel;
    });
    parts.push(routeKeys(root, ctx, grid, detail));
    const stopTheme = watchTheme(() => store.update({ theme: store.get("theme") + 1 }));
    parts.push({ destroy: stopTheme });
    store.notifyAll();
    if (signal?.aborted) cleanup();
    return cleanup;
  } catch (e) {
    // A part that cannot be built must not leave the comm listener, the WebGL context or half a view behind.
    cleanup();
    const failed = el("div", "fmwidget");
    failed.dataset.state = "error";
    failed.setAttribute("role", "alert");
    failed.textContent = `The feature-map view could not start: ${e instanceof Error ? e.message : String(e)}`;
    host.append(failed);
    const remove = (): void => failed.remove();
    signal?.addEventListener("abort", remove, { once: true });
    return remove;
  }
}

function render({ model, el: host, signal }: RenderProps<Traits>): () => void {
  return mount(host, model, (store) => new KernelSource(model, store), signal);
}

export default { render };
