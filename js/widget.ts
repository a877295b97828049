/**
 * anywidget entry point: builds the view (header, grid, colorbar, controls, channel view) and wires it to
 * the model's traits and to the request client. The parts live in their own modules; this file only
 * connects them.
 *
 * @example
 *   // anywidget loads the bundle and calls:
 *   const cleanup = widget.render({ model, el, signal });
 */
import type { RenderProps } from "@anywidget/types";
import { LayerLoader, layerKey, type LayerKey } from "./cache";
import { createColorbar } from "./colorbar";
import { type ColormapName, isDiverging } from "./colormaps";
import { type ControlState, createControls, createHeader, tileOrder } from "./controls";
import { createDetail } from "./detail";
import { createGrid, type Grid, type LayerData } from "./grid/grid";
import { isDropped, type LayerMeta, Requester, type Traits } from "./protocol";
import { displayRange } from "./scale";
import { watchTheme } from "./theme";

function div(className: string): HTMLDivElement {
  const node = document.createElement("div");
  node.className = className;
  return node;
}

/** The finite range over every captured layer (for the "global" scale). */
function globalRange(layers: readonly LayerMeta[]): [number, number] {
  let lo = Infinity;
  let hi = -Infinity;
  for (const l of layers) {
    if (Number.isFinite(l.min)) lo = Math.min(lo, l.min);
    if (Number.isFinite(l.max)) hi = Math.max(hi, l.max);
  }
  return lo <= hi ? [lo, hi] : [0, 0];
}

function render({ model, el, signal }: RenderProps<Traits>): () => void {
  const cleanups: (() => void)[] = [];
  let disposed = false;
  const cleanup = (): void => {
    if (disposed) return;
    disposed = true;
    // Last registered first: listeners go before the parts they call into.
    for (const fn of cleanups.reverse()) fn();
    root.remove();
  };
  signal?.addEventListener("abort", cleanup, { once: true });

  const root = div("fmwidget");
  root.dataset.state = "loading";
  el.append(root);

  const layers = (): readonly LayerMeta[] => model.get("layers") ?? [];
  const metaOf = (name: string): LayerMeta | undefined => layers().find((l) => l.name === name);
  const currentKey = (): LayerKey => ({
    revision: model.get("revision"),
    layer: model.get("layer"),
    sample: model.get("sample"),
  });
  const setTrait = <K extends keyof Traits>(name: K, value: Traits[K]): void => {
    model.set(name, value);
    model.save_changes();
  };
  const listen = (event: string, fn: () => void): void => {
    model.on(event, fn);
    cleanups.push(() => model.off(event, fn));
  };

  // --- view state -----------------------------------------------------------------------------------
  let shown: LayerData | null = null; // what the grid holds
  let shownKey = ""; // its cache key
  let drawn = false; // the grid reported drawing `shown`
  let layerError = "";
  let kernelBusy = false;
  let hovered: number | null = null;
  let cursor: number | null = null; // the tile Enter opens: last hovered or clicked
  const gradcam = new Map<string, Float32Array>();
  let gradcamNote = "";

  // --- layout ---------------------------------------------------------------------------------------
  const header = createHeader(root);
  const banner = div("fm-banner");
  banner.setAttribute("role", "status");
  root.append(banner);
  const main = div("fm-main");
  const stage = div("fm-stage");
  const message = div("fm-message");
  const spinner = div("fm-spinner");
  const messageText = div("fm-message-text");
  message.append(spinner, messageText);
  const barBox = div("fm-colorbar");
  main.append(stage, barBox);
  // Notes that do not stop the view (a sort that could not be applied).
  const readout = div("fm-readout");
  readout.hidden = true;
  root.append(main, readout);

  const requester = new Requester(model, {
    revision: () => model.get("revision"),
    onBusy: (busy) => {
      kernelBusy = busy;
      refreshState();
    },
  });
  cleanups.push(() => requester.dispose());
  const loader = new LayerLoader({ requester, metaOf });

  let grid: Grid | null = null;
  try {
    grid = createGrid(stage, {
      colormap: model.get("colormap"),
      scope: model.get("scale"),
      symmetric: model.get("symmetric"),
      globalRange: globalRange(layers()),
      selected: new Set(model.get("selected") ?? []),
      maxHeight: model.get("height") ?? 0,
    });
  } catch (e) {
    layerError = `The feature-map grid could not start: ${(e as Error).message}`;
  }
  const g = grid;
  if (g !== null) cleanups.push(() => g.destroy());
  stage.append(message);
  const colorbar = createColorbar(barBox);
  cleanups.push(() => colorbar.destroy());

  const controls = createControls(root, {
    onLayer: (name) => setTrait("layer", name),
    onColormap: (name: ColormapName) => {
      model.set("colormap", name);
      // A diverging map only means something centred on zero.
      if (isDiverging(name)) model.set("symmetric", true);
      model.save_changes();
    },
    onScale: (scope) => setTrait("scale", scope),
    onSymmetric: (on) => setTrait("symmetric", on),
    onSample: (index) => setTrait("sample", index),
    onSort: (sort) => setTrait("sort", sort),
    onTopK: (k) => setTrait("top_k", k),
  });
  // The slider sits right under the layer name it changes.
  root.insertBefore(controls.element, banner);
  cleanups.push(() => controls.destroy());

  const detail = createDetail(root, {
    requester,
    revision: () => model.get("revision"),
    sample: () => model.get("sample"),
    layer: () => metaOf(model.get("layer")),
    colormap: () => model.get("colormap"),
    scope: () => model.get("scale"),
    symmetric: () => model.get("symmetric"),
    globalRange: () => globalRange(layers()),
    flags: (c) => (shown !== null && c < shown.flags.length ? shown.flags[c] : undefined),
    onNavigate: (c) => {
      if (c !== null) {
        cursor = c;
        g?.focusTile(c);
      }
      setTrait("channel", c);
    },
  });
  cleanups.push(() => detail.destroy());

  // --- state display --------------------------------------------------------------------------------
  function refreshState(): void {
    const status = model.get("status");
    const kernelError = status?.state === "error" ? status.message || "the kernel reported an error" : "";
    const error = layerError || kernelError;
    const loading = !drawn;
    root.dataset.state = error ? "error" : loading ? "loading" : "ready";
    const layer = model.get("layer");
    if (error) {
      messageText.textContent = error;
      message.setAttribute("role", "alert");
    } else {
      messageText.textContent = layer ? `Loading ${layer}…` : "Loading…";
      message.removeAttribute("role");
    }
    // A cached layer is drawn within a frame: no spinner flash for it.
    message.hidden = !error && (drawn || (shown !== null && shownKey === layerKey(currentKey())));
    message.classList.toggle("fm-message-error", Boolean(error));
    const busy = kernelBusy || status?.state === "busy";
    banner.textContent = busy
      ? status?.state === "busy" && status.message
        ? status.message
        : "Kernel busy: the view updates when the running cell finishes."
      : "";
    banner.hidden = !busy;
  }

  function controlState(): ControlState {
    return {
      layers: layers(),
      layer: model.get("layer"),
      colormap: model.get("colormap"),
      scale: model.get("scale"),
      symmetric: model.get("symmetric"),
      sample: model.get("sample"),
      numSamples: model.get("num_samples"),
      predictions: model.get("predictions") ?? [],
      sort: model.get("sort"),
      topK: model.get("top_k"),
    };
  }

  function updateColorbar(): void {
    const scope = model.get("scale");
    const [gMin, gMax] = globalRange(layers());
    const meta = metaOf(model.get("layer"));
    let channel = hovered ?? detail.channel ?? (shown !== null && shown.channels > 0 ? 0 : null);
    if (shown !== null && channel !== null && channel >= shown.channels) channel = null;
    const cMin = shown !== null && channel !== null ? shown.stats[6 * channel] : 0;
    const cMax = shown !== null && channel !== null ? shown.stats[6 * channel + 1] : 0;
    const [lo, hi] = displayRange(
      scope,
      model.get("symmetric"),
      cMin,
      cMax,
      shown?.layerMin ?? meta?.min ?? 0,
      shown?.layerMax ?? meta?.max ?? 0,
      gMin,
      gMax,
    );
    const label = scope === "channel" ? (channel === null ? "per channel" : `channel ${channel}`) : scope === "layer" ? "this layer" : "all layers";
    colorbar.update(model.get("colormap"), lo, hi, label);
  }

  function showNote(text: string): void {
    readout.textContent = text;
    readout.hidden = text === "";
  }

  function applyOrder(): void {
    if (shown === null || g === null) return;
    const sort = model.get("sort");
    const weights = sort === "gradcam" ? (gradcam.get(shownKey) ?? null) : null;
    g.setOptions({
      order: tileOrder(sort, shown.stats, shown.channels, model.get("top_k"), weights),
      badges: weights,
    });
    if (sort === "gradcam" && weights === null) requestGradcam();
    showNote(sort === "gradcam" ? gradcamNote : "");
  }

  function requestGradcam(): void {
    const key = currentKey();
    const k = layerKey(key);
    requester.request("gradcam", { layer: key.layer, sample: key.sample }, { purpose: "gradcam" }).then(
      (reply) => {
        const w = reply.arrays.weights?.data;
        if (!(w instanceof Float32Array)) throw new Error("the reply carried no float32 weights");
        gradcam.set(k, w);
        gradcamNote = "";
        if (shownKey === k) applyOrder();
      },
      (e: unknown) => {
        if (isDropped(e) || shownKey !== k || model.get("sort") !== "gradcam") return;
        gradcamNote = `Grad-CAM order unavailable: ${(e as Error).message}`;
        showNote(gradcamNote);
      },
    );
  }

  function present(key: string, data: LayerData): void {
    shown = data;
    shownKey = key;
    drawn = false;
    layerError = "";
    gradcamNote = "";
    hovered = null;
    showNote("");
    header.update(metaOf(data.layer), data.downsample);
    refreshState();
    g?.setLayer(data);
    applyOrder();
    updateColorbar();
    prefetchNeighbours();
  }

  function prefetchNeighbours(): void {
    const list = layers();
    const i = list.findIndex((l) => l.name === model.get("layer"));
    if (i < 0) return;
    const names = [list[i + 1], list[i - 1], list[i + 2]].filter((l) => l !== undefined).map((l) => l.name);
    loader.prefetch(names, model.get("sample"), model.get("revision"));
  }

  function showLayer(): void {
    const key = currentKey();
    const k = layerKey(key);
    // Same layer again (a trait echo): nothing to do, unless an error covers it.
    if (k === shownKey && shown !== null && layerError === "") return;
    const meta = metaOf(key.layer);
    header.update(meta, 1);
    drawn = false;
    if (meta === undefined) {
      const n = layers().length;
      layerError =
        n === 0
          ? "No feature maps were captured: the model produced no 4-D (N, C, H, W) outputs."
          : `Layer "${key.layer}" is not among the ${n} captured layers; pick one with the slider.`;
      refreshState();
      return;
    }
    layerError = "";
    // The channel view follows the layer on its own request, whether or not the grid's load succeeds.
    const channel = model.get("channel");
    if (channel !== null) detail.show(channel);
    const hit = loader.peek(key);
    if (hit !== undefined) {
      present(k, hit);
      return;
    }
    refreshState();
    loader.load(key).then(
      (data) => {
        if (!disposed && layerKey(currentKey()) === k) present(k, data);
      },
      (e: unknown) => {
        if (disposed || isDropped(e) || layerKey(currentKey()) !== k) return;
        layerError = `Could not load layer "${key.layer}": ${(e as Error).message}`;
        refreshState();
      },
    );
  }

  g?.onDrawn((layer) => {
    if (shown === null || layer !== shown.layer || shownKey !== layerKey(currentKey())) return;
    drawn = true;
    refreshState();
  });
  g?.onClick((hit, ev) => {
    cursor = hit.channel;
    if (ev.shiftKey) {
      const selected = new Set(model.get("selected") ?? []);
      if (selected.has(hit.channel)) selected.delete(hit.channel);
      else selected.add(hit.channel);
      setTrait("selected", [...selected].sort((a, b) => a - b));
      return;
    }
    setTrait("channel", hit.channel);
  });
  g?.onHover((hit) => {
    hovered = hit?.channel ?? null;
    if (hit !== null) cursor = hit.channel;
    if (model.get("scale") === "channel") updateColorbar();
  });

  // --- model → view ---------------------------------------------------------------------------------
  const syncControls = (): void => controls.update(controlState());
  listen("change:layers", () => {
    g?.setOptions({ globalRange: globalRange(layers()) });
    syncControls();
    shownKey = "";
    showLayer();
  });
  listen("change:layer", () => {
    syncControls();
    showLayer();
  });
  listen("change:sample", () => {
    syncControls();
    showLayer();
  });
  listen("change:revision", () => {
    loader.clear();
    gradcam.clear();
    shownKey = "";
    showLayer();
  });
  for (const name of ["colormap", "scale", "symmetric"] as const) {
    listen(`change:${name}`, () => {
      g?.setOptions({ colormap: model.get("colormap"), scope: model.get("scale"), symmetric: model.get("symmetric") });
      syncControls();
      updateColorbar();
      detail.redraw();
    });
  }
  for (const name of ["num_samples", "predictions"] as const) listen(`change:${name}`, syncControls);
  listen("change:sort", () => {
    syncControls();
    applyOrder();
  });
  listen("change:top_k", () => {
    syncControls();
    applyOrder();
  });
  listen("change:selected", () => g?.setOptions({ selected: new Set(model.get("selected") ?? []) }));
  listen("change:channel", () => {
    const c = model.get("channel");
    if (c !== null) cursor = c;
    detail.show(c);
    updateColorbar();
  });
  listen("change:status", refreshState);
  listen("change:height", () => g?.setOptions({ maxHeight: model.get("height") ?? 0 }));

  // --- environment ----------------------------------------------------------------------------------
  const onKey = (ev: KeyboardEvent): void => {
    // Shift/Ctrl/Cmd+Enter run the cell even with focus inside the widget.
    if (ev.key === "Enter" && (ev.shiftKey || ev.ctrlKey || ev.metaKey || ev.altKey)) return;
    if (detail.handleKey(ev)) {
      ev.preventDefault();
    } else if (ev.key === "Enter" && g !== null && g.element.contains(ev.target as Node)) {
      const c = cursor ?? (shown !== null && shown.channels > 0 ? 0 : null);
      if (c !== null) setTrait("channel", c);
      ev.preventDefault();
    } else if (ev.key === "Escape") {
      // Nothing to close: Esc goes on to JupyterLab (command mode).
      return;
    }
    // JupyterLab's shortcuts would otherwise take arrow keys and letters typed inside the widget.
    ev.stopPropagation();
  };
  root.addEventListener("keydown", onKey);
  cleanups.push(() => root.removeEventListener("keydown", onKey));

  const resize = new ResizeObserver(() => g?.resize());
  resize.observe(root);
  cleanups.push(() => resize.disconnect());
  cleanups.push(
    watchTheme(() => {
      g?.refreshTheme();
      detail.redraw();
      updateColorbar();
    }),
  );

  syncControls();
  refreshState();
  showLayer();
  const channel = model.get("channel");
  if (channel !== null) detail.show(channel);
  if (signal?.aborted) cleanup();
  return cleanup;
}

export default { render };
