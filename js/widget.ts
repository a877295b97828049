/**
 * anywidget entry point: builds the view (header, group bar, controls, ablation row, grid, colorbar,
 * Grad-CAM panel, channel view) and wires it to the model's traits and to the request client. The parts live in their own modules; this file only
 * connects them.
 *
 * @example
 *   // anywidget loads the bundle and calls:
 *   const cleanup = widget.render({ model, el, signal });
 */
import type { RenderProps } from "@anywidget/types";
import { createAblationBar } from "./ablation";
import { type LayerKey, LayerLoader, LruCache, layerKey } from "./cache";
import { createColorbar } from "./colorbar";
import { type ColormapName, isDiverging } from "./colormaps";
import { type ControlState, createControls, createHeader, tileOrder } from "./controls";
import { createDetail } from "./detail";
import { camMethodLabel, createGradcamPanel, type GradcamResult } from "./gradcam";
import { createGrid, type Grid } from "./grid/grid";
import { createGroupBar } from "./groups";
import { isDropped, type LayerMeta, type LoadedLayer, Requester, type Traits, toLayerData } from "./protocol";
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

/** Full-resolution tiles are fetched once fewer tiles than this are visible (a zoomed-in grid). */
const FULLRES_MAX_TILES = 64;

/** The kernel hears of zoom and pan at most this often (ms); linked views in the page follow every frame. */
const VIEW_SAVE_MS = 150;

/** Grad-CAM maps kept for revisits: a pytorch-grad-cam map at input resolution is about 200 KB. */
const GRADCAM_CACHE_BYTES = 16 * 2 ** 20;

function render({ model, el, signal }: RenderProps<Traits>): () => void {
  const cleanups: (() => void)[] = [];
  let disposed = false;
  const root = div("fmwidget");
  root.dataset.state = "loading";
  el.append(root);
  const cleanup = (): void => {
    if (disposed) return;
    disposed = true;
    // Last registered first: listeners go before the parts they call into.
    for (const fn of cleanups.reverse()) fn();
    root.remove();
  };
  signal?.addEventListener("abort", cleanup, { once: true });

  try {
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
    let shown: LoadedLayer | null = null; // what the grid holds
    let shownKey = ""; // its cache key
    let drawn = false; // the grid reported drawing `shown`
    let layerError = "";
    // Set once when the grid cannot start; unlike layerError no layer change clears it.
    let gridError = "";
    let kernelBusy = false;
    // ipywidgets fires `comm_live_update` when it disconnects the widgets of a kernel that is restarting or
    // dead, and never reconnects them: from then on no request can be answered.
    let kernelGone = false;
    let hovered: number | null = null;
    let cursor: number | null = null; // the tile Enter opens: last hovered or clicked
    // Grad-CAM results by layer key and class; one feeds both the panel and the tiles' weights.
    // Grad-CAM maps by target, method, revision, sample and layer; bounded like the layer cache.
    const gradcam = new LruCache<GradcamResult>(
      GRADCAM_CACHE_BYTES,
      (r) => r.heatmap.byteLength + r.weights.byteLength,
    );
    let gradcamPending = ""; // the key of the Grad-CAM request in flight
    let gradcamError: { key: string; text: string } | null = null;
    let gradcamInputKey = "";
    let preview: string | null = null; // the layer under the slider's thumb, not yet sent to the model
    let ablatePending = false;
    let ablateError = "";
    let writingView = false; // the view trait is being set from this view's grid: its change event is ours
    // Full-resolution tiles of the shown (downsampled) layer: which key and channels are shown / asked for.
    let fullRes: { key: string; channels: Set<number> } | null = null;
    let fullResPending: { key: string; channels: Set<number> } | null = null;

    // --- layout ---------------------------------------------------------------------------------------
    const header = createHeader(root, { onLayer: (name) => setTrait("layer", name) });
    const groupBar = createGroupBar(root, {
      onPair: (pair) => setTrait("group_pair", pair),
      onSample: (index) => setTrait("sample", index),
    });
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
      gridError = `The feature-map grid could not start: ${(e as Error).message}`;
    }
    const g = grid;
    if (g !== null) cleanups.push(() => g.destroy());
    stage.append(message);
    const colorbar = createColorbar(barBox);
    cleanups.push(() => colorbar.destroy());

    const controls = createControls(root, {
      onLayer: (name) => {
        preview = null;
        setTrait("layer", name);
        // The same layer again sends no change event: the header must come back from the preview itself.
        syncHeader();
        refreshState();
      },
      onPreview: (name) => {
        preview = name;
        syncHeader();
        refreshState();
      },
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
      onGradcam: (open) => setTrait("gradcam", open),
    });
    // The slider sits right under the layer name it changes.
    root.insertBefore(controls.element, banner);
    cleanups.push(() => controls.destroy());

    const ablationBar = createAblationBar(root, {
      onAblate: () => requestAblation(),
      onDismiss: () => {
        ablateError = "";
        if (model.get("ablation") != null) setTrait("ablation", null);
        updateAblation();
      },
      onShowLayer: (name) => setTrait("layer", name),
    });
    // Right above the grid whose tiles it marks.
    root.insertBefore(ablationBar.element, banner);
    cleanups.push(() => ablationBar.destroy());

    // Below the grid, above the channel view: the heatmap is read against the tiles' weights.
    const gradcamPanel = createGradcamPanel(root, {
      onTarget: (t) => setTrait("target", t),
      onMethod: (m) => setTrait("cam_method", m),
    });
    cleanups.push(() => gradcamPanel.destroy());

    const detail = createDetail(root, {
      requester,
      revision: () => model.get("revision"),
      sample: () => model.get("sample"),
      layer: () => metaOf(model.get("layer")),
      colormap: () => model.get("colormap"),
      scope: () => model.get("scale"),
      symmetric: () => model.get("symmetric"),
      globalRange: () => globalRange(layers()),
      // The grid may still hold another layer (or an older capture) than the channel shown.
      flags: (c, layer) =>
        shown !== null && shown.layer === layer && shownKey === layerKey(currentKey()) && c < shown.flags.length
          ? shown.flags[c]
          : undefined,
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
      const error = gridError || layerError || kernelError;
      const loading = !drawn;
      root.dataset.state = error ? "error" : loading ? "loading" : "ready";
      const layer = model.get("layer");
      // For automation: which layer the "ready" refers to (the grid drawn is this layer's).
      if (!error && !loading) root.dataset.layer = layer;
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
      // The header names the layer at once (even the one under a dragged thumb); the mark says it is not drawn yet.
      header.setPending(!error && (!drawn || (preview !== null && preview !== layer)));
      const busy = kernelBusy || status?.state === "busy";
      banner.textContent = kernelGone
        ? "The kernel restarted or stopped, so this view can no longer update: run its cell again."
        : busy
          ? status?.state === "busy" && status.message
            ? status.message
            : "Kernel busy: the view updates when the running cell finishes."
          : "";
      banner.hidden = !(kernelGone || busy);
      root.dataset.kernel = kernelGone ? "gone" : "live";
    }

    /** The header shows the layer under the slider's thumb while dragging, else the model's layer. */
    function syncHeader(): void {
      const name = preview ?? model.get("layer");
      const meta = metaOf(name);
      const downsample =
        shown !== null && shown.layer === name && shownKey === layerKey(currentKey()) ? shown.downsample : 1;
      header.update(meta, downsample, partnerOf(meta));
    }

    function updateAblation(): void {
      const ablation = model.get("ablation") ?? null;
      ablationBar.update({
        ablation,
        sample: model.get("sample"),
        numSamples: model.get("num_samples"),
        layer: model.get("layer"),
        selected: model.get("selected") ?? [],
        pending: ablatePending,
        error: ablateError,
      });
      // Marks belong to the layer the grid holds, which lags the layer trait while the next one loads.
      const marked = ablation !== null && shown !== null && ablation.layer === shown.layer;
      g?.setOptions({ ablated: new Set(marked ? ablation.channels : []) });
    }

    /** "Ablate selected": the kernel zeroes the channels, re-runs the model and sets the `ablation` trait. */
    function requestAblation(): void {
      const channels = [...(model.get("selected") ?? [])];
      if (channels.length === 0 || ablatePending) return;
      ablatePending = true;
      ablateError = "";
      updateAblation();
      requester.request("ablate", { layer: model.get("layer"), channels }, { purpose: "ablate" }).then(
        () => {
          ablatePending = false;
          if (!disposed) updateAblation();
        },
        (e: unknown) => {
          ablatePending = false;
          if (disposed) return;
          if (!isDropped(e)) ablateError = (e as Error).message;
          updateAblation();
        },
      );
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
        gradcam: model.get("gradcam") ?? false,
        groups: model.get("groups") ?? [],
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
      const label =
        scope === "channel"
          ? channel === null
            ? "per channel"
            : `channel ${channel}`
          : scope === "layer"
            ? "this layer"
            : "all layers";
      colorbar.update(model.get("colormap"), lo, hi, label);
    }

    function showNote(text: string): void {
      readout.textContent = text;
      readout.hidden = text === "";
    }

    const camMethod = (): string => model.get("cam_method") ?? "gradcam";
    /** The Grad-CAM cache key of a layer key under the current class and method. */
    const gradcamKeyOf = (k: string): string => `${model.get("target") ?? "predicted"}|${camMethod()}|${k}`;
    const gradcamWanted = (): boolean => (model.get("gradcam") ?? false) || model.get("sort") === "gradcam";

    function applyOrder(): void {
      if (shown === null || g === null) return;
      const sort = model.get("sort");
      const result = gradcam.get(gradcamKeyOf(shownKey));
      // Only our Grad-CAM has per-channel weights; other methods' maps leave the tiles in their order.
      const weights = result !== undefined && result.weights.length > 0 ? result.weights : null;
      const badges = sort === "effect" ? shown.effect : gradcamWanted() ? weights : null;
      g.setOptions({
        order: tileOrder(sort, shown.stats, shown.channels, model.get("top_k"), weights, shown.effect),
        badges,
        badgeLabel: sort === "effect" ? "d" : "Grad-CAM weight",
      });
      const camError = gradcamError?.key === gradcamKeyOf(shownKey) ? gradcamError.text : "";
      let note = "";
      if (sort === "gradcam" && camError !== "") note = `Grad-CAM order unavailable: ${camError}`;
      if (sort === "gradcam" && result !== undefined && weights === null) {
        note = `Tiles stay in channel order: weights only for Grad-CAM (ours); ${camMethodLabel(result.method)} gives no per-channel weights.`;
      }
      if (sort === "effect" && shown.effect === null) {
        note =
          (model.get("groups") ?? []).length === 0
            ? "Group effect order needs groups: pass groups= to the widget."
            : "Group effect order unavailable: the layer reply carried no effect array.";
      }
      showNote(note);
      requestFullRes();
    }

    /** Asks for the shown layer's Grad-CAM when the panel or the sort needs it; shows what is known. */
    function updateGradcam(): void {
      const open = model.get("gradcam") ?? false;
      gradcamPanel.element.hidden = !open;
      const key = currentKey();
      if (open) {
        gradcamPanel.setMethods(model.get("cam_methods") ?? ["gradcam"], camMethod());
        gradcamPanel.setClasses(model.get("predictions")?.[key.sample] ?? [], model.get("target"));
        requestInput();
      }
      if (!gradcamWanted()) return;
      const k = gradcamKeyOf(layerKey(key));
      const hit = gradcam.get(k);
      if (hit !== undefined) {
        if (open) gradcamPanel.show(hit);
        return;
      }
      if (gradcamError?.key === k) {
        if (open) gradcamPanel.showError(gradcamError.text);
        return;
      }
      const method = camMethod();
      if (open) gradcamPanel.showLoading(key.layer, method);
      if (gradcamPending === k) return;
      gradcamPending = k;
      const target = model.get("target");
      const args: Record<string, unknown> = { layer: key.layer, sample: key.sample, target, method };
      requester
        .request("gradcam", args, { purpose: "gradcam" })
        .then(
          (reply) => {
            if (gradcamPending === k) gradcamPending = "";
            const heatmap = reply.arrays.heatmap;
            const weights = reply.arrays.weights?.data;
            if (heatmap === undefined || !(heatmap.data instanceof Float32Array) || heatmap.shape.length !== 2) {
              throw new Error("the reply carried no float32 (H, W) heatmap");
            }
            if (!(weights instanceof Float32Array)) throw new Error("the reply carried no float32 weights");
            const used = reply.meta.target;
            const label = reply.meta.label;
            gradcam.set(k, {
              layer: key.layer,
              sample: key.sample,
              method: typeof reply.meta.method === "string" ? reply.meta.method : method,
              normalized: reply.meta.normalized === true,
              target: typeof used === "number" ? used : target,
              label: typeof label === "string" ? label : null,
              height: heatmap.shape[0],
              width: heatmap.shape[1],
              heatmap: heatmap.data,
              weights,
            });
            onGradcamSettled(k);
          },
          (e: unknown) => {
            if (gradcamPending === k) gradcamPending = "";
            if (isDropped(e) || disposed) return;
            gradcamError = { key: k, text: (e as Error).message };
            onGradcamSettled(k);
          },
        )
        .catch((e: unknown) => {
          // A reply that came but could not be read is an error of that layer, like an error reply.
          gradcamError = { key: k, text: (e as Error).message };
          onGradcamSettled(k);
        });
    }

    function onGradcamSettled(k: string): void {
      if (disposed || gradcamKeyOf(layerKey(currentKey())) !== k) return;
      updateGradcam();
      if (gradcamKeyOf(shownKey) === k) applyOrder();
    }

    /** The input picture under the heatmap: once per sample and revision. */
    function requestInput(): void {
      const key = `${model.get("revision")}/${model.get("sample")}`;
      if (gradcamInputKey === key) return;
      gradcamInputKey = key;
      // The previous sample's picture must not sit under this sample's heatmap while its own loads.
      gradcamPanel.setInput(null);
      requester.request("input", { sample: model.get("sample") }, { purpose: "gradcam-input" }).then(
        (reply) => {
          if (disposed || gradcamInputKey !== key) return;
          const shape = reply.meta.shape;
          const pixels = reply.arrays.image?.data;
          if (!Array.isArray(shape) || !(pixels instanceof Uint8Array) || pixels.length !== shape[0] * shape[1] * 3) {
            gradcamPanel.setInput(null, "The input reply carried no RGB image: the heatmap is shown alone.");
            return;
          }
          gradcamPanel.setInput({ height: shape[0], width: shape[1], pixels });
        },
        (e: unknown) => {
          if (isDropped(e)) {
            if (gradcamInputKey === key) gradcamInputKey = "";
            return;
          }
          if (disposed || gradcamInputKey !== key) return;
          gradcamPanel.setInput(null, `No input image (${(e as Error).message}): the heatmap is shown alone.`);
        },
      );
    }

    /**
     * Zoomed into a downsampled layer: the few visible tiles are fetched at full resolution (latest wins),
     * so magnified pixels show the real map rather than its pooled average.
     */
    function requestFullRes(): void {
      if (shown === null || g === null || shown.downsample <= 1) return;
      const { channels, pixelSize } = g.visibleTiles();
      if (channels.length === 0 || channels.length >= FULLRES_MAX_TILES || pixelSize <= 1) return;
      const key = shownKey;
      const covers = (have: { key: string; channels: Set<number> } | null): boolean =>
        have !== null && have.key === key && channels.every((c) => have.channels.has(c));
      if (covers(fullRes) || covers(fullResPending)) return;
      const meta = metaOf(shown.layer);
      if (meta === undefined) return;
      const wanted = [...channels].sort((a, b) => a - b);
      const pending = { key, channels: new Set(wanted) };
      fullResPending = pending;
      const args = { layer: shown.layer, sample: model.get("sample"), channels: wanted };
      requester
        .request("layer", args, { purpose: "fullres" })
        .then(
          (reply) => {
            if (fullResPending === pending) fullResPending = null;
            const data = toLayerData(reply, meta);
            if (disposed || shownKey !== key || data.only === null || data.downsample !== 1) return;
            g.setFullRes({
              channels: Int32Array.from(data.only),
              height: data.height,
              width: data.width,
              values: data.values,
            });
            fullRes = { key, channels: new Set(data.only) };
          },
          (e: unknown) => {
            if (fullResPending === pending) fullResPending = null;
            // The pooled tiles stay; the note says why the zoomed tiles are not sharper.
            if (!isDropped(e) && !disposed && shownKey === key)
              showNote(`Full-resolution tiles unavailable: ${(e as Error).message}`);
          },
        )
        .catch((e: unknown) => {
          // A reply that came but could not be read or drawn: the pooled tiles stay, the note says why.
          if (!disposed && shownKey === key) showNote(`Full-resolution tiles unavailable: ${(e as Error).message}`);
        });
    }

    function updateGroups(): void {
      groupBar.update({
        groups: model.get("groups") ?? [],
        pair: model.get("group_pair") ?? [],
        info: shown?.groups ?? null,
        effect: shown?.effect ?? null,
      });
    }

    function partnerOf(meta: LayerMeta | undefined): LayerMeta | undefined {
      const name = meta?.post ?? meta?.pre;
      return name == null ? undefined : metaOf(name);
    }

    function present(key: string, data: LoadedLayer): void {
      shown = data;
      shownKey = key;
      drawn = false;
      layerError = "";
      hovered = null;
      fullRes = null;
      showNote("");
      syncHeader();
      updateAblation();
      updateGroups();
      try {
        g?.setLayer(data);
      } catch (e) {
        // A layer the grid cannot draw (no channels, malformed arrays) is this layer's error, not a hang.
        layerError = `Layer "${data.layer}" cannot be shown: ${(e as Error).message}`;
        refreshState();
        prefetchNeighbours();
        return;
      }
      refreshState();
      applyOrder();
      updateColorbar();
      // Its health row reads the flags of the layer just shown.
      detail.redraw();
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
      syncHeader();
      updateGradcam();
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
      requestFullRes();
    });
    // Zoom and pan change every frame: linked views in this page follow each change (`model.set`), while
    // the kernel gets at most one update per VIEW_SAVE_MS and the last one (no backlog while a cell runs).
    let viewSaveTimer = 0;
    let viewSavedAt = 0;
    const saveView = (): void => {
      viewSaveTimer = 0;
      viewSavedAt = performance.now();
      model.save_changes();
    };
    cleanups.push(() => clearTimeout(viewSaveTimer));
    g?.onViewChange((view, byUser) => {
      if (byUser) {
        writingView = true;
        try {
          model.set("view", view);
        } finally {
          writingView = false;
        }
        if (viewSaveTimer === 0) {
          const wait = Math.max(0, viewSavedAt + VIEW_SAVE_MS - performance.now());
          viewSaveTimer = window.setTimeout(saveView, wait);
        }
      }
      requestFullRes();
    });
    g?.onClick((hit, ev) => {
      cursor = hit.channel;
      if (ev.shiftKey) {
        const selected = new Set(model.get("selected") ?? []);
        if (selected.has(hit.channel)) selected.delete(hit.channel);
        else selected.add(hit.channel);
        setTrait(
          "selected",
          [...selected].sort((a, b) => a - b),
        );
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
    const syncControls = (): void => {
      controls.update(controlState());
      header.setPrediction(model.get("predictions")?.[model.get("sample")]?.[0] ?? null);
    };
    listen("change:layers", () => {
      g?.setOptions({ globalRange: globalRange(layers()) });
      syncControls();
      shownKey = "";
      showLayer();
    });
    listen("change:layer", () => {
      // A Grad-CAM error is retried when its layer is shown again (the user may have fixed the cause).
      gradcamError = null;
      syncControls();
      showLayer();
      updateAblation();
    });
    listen("change:sample", () => {
      syncControls();
      showLayer();
      updateAblation();
    });
    listen("comm_live_update", () => {
      kernelGone = true;
      refreshState();
    });
    listen("change:revision", () => {
      loader.clear();
      gradcam.clear();
      gradcamError = null;
      gradcamPending = "";
      gradcamInputKey = "";
      shownKey = "";
      showLayer();
    });
    // The effect array of every layer depends on the groups and the pair: cached layers are out of date.
    for (const name of ["groups", "group_pair"] as const) {
      listen(`change:${name}`, () => {
        loader.clear();
        shownKey = "";
        syncControls();
        updateGroups();
        showLayer();
      });
    }
    listen("change:gradcam", () => {
      // Reopening the panel retries a failed Grad-CAM.
      gradcamError = null;
      syncControls();
      updateGradcam();
      applyOrder();
    });
    for (const name of ["target", "cam_method", "cam_methods"] as const) {
      listen(`change:${name}`, () => {
        updateGradcam();
        applyOrder();
      });
    }
    listen("change:ablation", () => {
      // A new ablation (from Python or the button) replaces an error shown for an earlier try.
      if (model.get("ablation") != null) ablateError = "";
      updateAblation();
    });
    listen("change:view", () => {
      if (!writingView) g?.setView(model.get("view"));
    });
    for (const name of ["colormap", "scale", "symmetric"] as const) {
      listen(`change:${name}`, () => {
        g?.setOptions({
          colormap: model.get("colormap"),
          scope: model.get("scale"),
          symmetric: model.get("symmetric"),
        });
        syncControls();
        updateColorbar();
        detail.redraw();
      });
    }
    listen("change:num_samples", () => {
      syncControls();
      updateAblation();
    });
    listen("change:predictions", () => {
      syncControls();
      updateGradcam();
    });
    listen("change:sort", () => {
      syncControls();
      updateGradcam();
      applyOrder();
    });
    listen("change:top_k", () => {
      syncControls();
      applyOrder();
    });
    listen("change:selected", () => {
      g?.setOptions({ selected: new Set(model.get("selected") ?? []) });
      updateAblation();
    });
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
      // JupyterLab's shortcuts (Ctrl+S, Cmd+B, Ctrl/Shift+Enter run the cell) work with focus inside the widget.
      if (ev.ctrlKey || ev.metaKey || ev.altKey || (ev.key === "Enter" && ev.shiftKey)) return;
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

    // Only a width change re-lays the grid out: resizing a canvas clears it, and the root's height changes
    // whenever a panel opens or closes.
    let lastWidth = -1;
    const resize = new ResizeObserver(() => {
      const width = root.clientWidth;
      if (width === lastWidth) return;
      lastWidth = width;
      g?.resize();
    });
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
    const view = model.get("view");
    if (view) g?.setView(view);
    updateGroups();
    updateAblation();
    showLayer();
    const channel = model.get("channel");
    if (channel !== null) detail.show(channel);
    if (signal?.aborted) cleanup();
    return cleanup;
  } catch (e) {
    // A part that cannot be built must not leave the comm listener, the WebGL context or half a view behind.
    cleanup();
    const failed = div("fmwidget");
    failed.dataset.state = "error";
    failed.setAttribute("role", "alert");
    failed.textContent = `The feature-map view could not start: ${e instanceof Error ? e.message : String(e)}`;
    el.append(failed);
    const remove = (): void => failed.remove();
    signal?.addEventListener("abort", remove, { once: true });
    return remove;
  }
}

export default { render };
