/**
 * The grid panel: the feature-map grid of the shown layer, drawn with the store's colormap, scale,
 * selection, sort and ablation marks; clicks open or select channels, the pointer sets `hovered`, zoom
 * and pan go to the `view` trait (linked views each frame, the kernel at most every 150 ms). Notes that
 * do not stop the view (a sort that could not be applied) go in the readout under it.
 */
import { createGrid, type Grid } from "../grid/grid";
import { tileOrder } from "../views/controls";
import { camMethodLabel } from "../views/gradcam";
import { fullResLoader } from "./fullres";
import { type Panel, type PanelContext, touched } from "./panel";

/** The kernel hears of zoom and pan at most this often (ms); linked views in the page follow every frame. */
const VIEW_SAVE_MS = 150;

export interface GridPanel extends Panel {
  /** The grid's element (null when the grid could not start). */
  readonly element: HTMLElement | null;
  /** Puts the focus ring on a channel's tile and pans it into view. */
  focusTile(channel: number): void;
}

export function gridPanel(ctx: PanelContext, stage: HTMLElement, readout: HTMLElement, root: HTMLElement): GridPanel {
  const { store } = ctx;
  let grid: Grid;
  try {
    grid = createGrid(stage, {
      colormap: store.get("colormap"),
      scope: store.get("scale"),
      symmetric: store.get("symmetric"),
      globalRange: store.globalRange(),
      selected: new Set(store.get("selected")),
      maxHeight: store.get("height"),
    });
  } catch (e) {
    store.update({ gridError: `The feature-map grid could not start: ${(e as Error).message}` });
    return { element: null, focusTile() {}, update() {}, destroy() {} };
  }
  const g = grid;
  readout.hidden = true;
  const showNote = (text: string): void => {
    readout.textContent = text;
    readout.hidden = text === "";
  };
  const fullRes = fullResLoader(store, ctx.source, g, showNote);

  g.onDrawn((layer) => {
    if (store.shownCurrent()?.layer !== layer) return;
    store.update({ drawn: true });
    fullRes.request();
  });
  // Zoom and pan change every frame: linked views in this page follow each change (`model.set`), while
  // the kernel gets at most one update per VIEW_SAVE_MS and the last one (no backlog while a cell runs).
  let saveTimer = 0;
  let savedAt = 0;
  g.onViewChange((view, byUser) => {
    if (byUser) {
      store.set({ view }, { save: false, echo: false });
      if (saveTimer === 0) {
        saveTimer = window.setTimeout(
          () => {
            saveTimer = 0;
            savedAt = performance.now();
            store.save();
          },
          Math.max(0, savedAt + VIEW_SAVE_MS - performance.now()),
        );
      }
    }
    fullRes.request();
  });
  // A click opens (or, with Shift, toggles) a channel; what it returns puts that back when the click was
  // the first of a double-click (which resets the zoom).
  g.onClick((hit, ev) => {
    const before = { channel: store.get("channel"), selected: store.get("selected") };
    store.batch(() => {
      store.update({ cursor: hit.channel });
      if (!ev.shiftKey) {
        store.set({ channel: hit.channel });
        return;
      }
      const selected = new Set(store.get("selected"));
      if (selected.has(hit.channel)) selected.delete(hit.channel);
      else selected.add(hit.channel);
      store.set({ selected: [...selected].sort((a, b) => a - b) });
    });
    return () => store.set(ev.shiftKey ? { selected: before.selected } : { channel: before.channel });
  });
  g.onHover((hit) => store.update(hit === null ? { hovered: null } : { hovered: hit.channel, cursor: hit.channel }));

  // Only a width change re-lays the grid out: resizing a canvas clears it, and the root's height changes
  // whenever a panel opens or closes.
  let lastWidth = -1;
  const resize = new ResizeObserver(() => {
    if (root.clientWidth === lastWidth) return;
    lastWidth = root.clientWidth;
    g.resize();
  });
  resize.observe(root);

  /** Hands the shown layer to the grid; false when the grid cannot take it. */
  function present(): boolean {
    const shown = store.get("shown");
    fullRes.reset();
    showNote("");
    if (shown === null) return false;
    try {
      g.setLayer(shown);
      return true;
    } catch (e) {
      // A layer the grid cannot draw (no channels, malformed arrays) is this layer's error, not a hang.
      store.update({ layerError: `Layer "${shown.layer}" cannot be shown: ${(e as Error).message}` });
      return false;
    }
  }

  /**
   * The numbers on the tiles: what the sort orders by (Grad-CAM weights, |d|, selectivity), else the
   * Grad-CAM weights while the panel is open, else the dataset selectivity (a class picked) or the
   * dataset d (a pair picked).
   */
  function tileBadges(): { badges: Float32Array | null; badgeLabel: string } {
    const shown = store.get("shown");
    const scan = shown?.scan ?? null;
    const result = ctx.source.peekGradcam(store.camKey(store.get("shownKey")));
    const weights = result !== undefined && result.weights.length > 0 ? result.weights : null;
    const selectivity = { badges: scan?.selectivity ?? null, badgeLabel: `selectivity for ${scan?.label ?? ""}` };
    const datasetD = { badges: scan?.effect ?? null, badgeLabel: `d (${scan?.pair.join(" vs ") ?? ""}, dataset)` };
    switch (store.get("sort")) {
      case "effect":
        return { badges: shown?.effect ?? null, badgeLabel: "d" };
      case "selectivity":
        return selectivity;
      case "dataset_effect":
        return datasetD;
    }
    if (store.camWanted()) return { badges: weights, badgeLabel: "Grad-CAM weight" };
    if (selectivity.badges !== null) return selectivity;
    if (datasetD.badges !== null) return datasetD;
    return { badges: null, badgeLabel: "" };
  }

  /** Why a dataset sort leaves the tiles in channel order ("" when it applies). */
  function scanSortNote(sort: string, layer: string): string {
    const scan = store.get("shown")?.scan ?? null;
    const info = store.get("scan_info");
    if (info === null) return "Dataset order needs a scan: pass scan= (from fmwidget.scan) to the widget.";
    if (scan === null) return `Dataset order unavailable: layer "${layer}" is not in the scan.`;
    if (sort === "selectivity" && scan.selectivity === null)
      return "Selectivity order needs a class: pick one under Dataset.";
    if (sort === "dataset_effect" && scan.effect === null)
      return "Dataset effect order needs two groups: pick them under Dataset.";
    return "";
  }

  /** Tile order, badges and the note on why a sort could not be applied. */
  function applyOrder(): void {
    const shown = store.get("shown");
    if (shown === null) return;
    const sort = store.get("sort");
    const camKey = store.camKey(store.get("shownKey"));
    const result = ctx.source.peekGradcam(camKey);
    // Only our Grad-CAM has per-channel weights; other methods' maps leave the tiles in their order.
    const weights = result !== undefined && result.weights.length > 0 ? result.weights : null;
    const scan = shown.scan;
    g.setOptions({
      order: tileOrder(sort, shown.stats, shown.channels, store.get("top_k"), weights, shown.effect, scan),
      ...tileBadges(),
      scanImages: scan?.images ?? null,
    });
    const camError = store.get("camError");
    let note = "";
    if (sort === "gradcam" && camError?.key === camKey) note = `Grad-CAM order unavailable: ${camError.text}`;
    if (sort === "gradcam" && result !== undefined && weights === null) {
      note = `Tiles stay in channel order: weights only for Grad-CAM (ours); ${camMethodLabel(result.method)} gives no per-channel weights.`;
    }
    if (sort.startsWith("dataset_") || sort === "selectivity") note = scanSortNote(sort, shown.layer);
    if (sort === "effect" && shown.effect === null) {
      note =
        store.get("groups").length === 0
          ? "Group effect order needs groups: pass groups= to the widget."
          : "Group effect order unavailable: the layer reply carried no effect array.";
    }
    showNote(note);
    fullRes.request();
  }

  return {
    element: g.element,
    focusTile: (channel) => g.focusTile(channel),
    update(changed) {
      if (touched(changed, "colormap", "scale", "symmetric")) {
        g.setOptions({ colormap: store.get("colormap"), scope: store.get("scale"), symmetric: store.get("symmetric") });
      }
      if (changed.has("layers")) g.setOptions({ globalRange: store.globalRange() });
      if (changed.has("selected")) g.setOptions({ selected: new Set(store.get("selected")) });
      if (changed.has("height")) g.setOptions({ maxHeight: store.get("height") });
      if (changed.has("view")) g.setView(store.get("view"));
      if (changed.has("theme")) g.refreshTheme();
      const drawable = changed.has("shown") ? present() : store.get("shown") !== null;
      if (touched(changed, "shown", "ablation")) {
        // Marks belong to the layer the grid holds, which lags the layer trait while the next one loads.
        const ablation = store.get("ablation");
        const marked = ablation !== null && ablation.layer === store.get("shown")?.layer;
        g.setOptions({ ablated: new Set(marked ? ablation.channels : []) });
      }
      const orderKeys = [
        "sort",
        "top_k",
        "gradcam",
        "target",
        "cam_method",
        "camReady",
        "camError",
        "groups",
        "scan_info",
      ] as const;
      if (drawable && touched(changed, "shown", ...orderKeys)) applyOrder();
    },
    destroy() {
      clearTimeout(saveTimer);
      resize.disconnect();
      fullRes.destroy();
      g.destroy();
    },
  };
}
