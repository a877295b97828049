/**
 * The control bar panel: the layer slider, colormap, scale, sample, sort, top-k and Grad-CAM toggle,
 * drawn from the store and written back to the traits.
 */
import { isDiverging } from "../colormaps";
import { createControls } from "../views/controls";
import { type Panel, type PanelContext, touched } from "./panel";

export function controlsPanel({ store }: PanelContext, container: HTMLElement): Panel {
  const controls = createControls(container, {
    // The same layer again sends no change event: clearing the preview brings the header back by itself.
    onLayer: (name) =>
      store.batch(() => {
        store.update({ preview: null });
        store.set({ layer: name });
      }),
    onPreview: (name) => store.update({ preview: name }),
    // A diverging map only means something centred on zero.
    onColormap: (name) => store.set(isDiverging(name) ? { colormap: name, symmetric: true } : { colormap: name }),
    onScale: (scale) => store.set({ scale }),
    onSymmetric: (symmetric) => store.set({ symmetric }),
    onSample: (sample) => store.set({ sample }),
    onSort: (sort) => store.set({ sort }),
    onTopK: (k) => store.set({ top_k: k }),
    onGradcam: (open) => store.set({ gradcam: open }),
  });
  const keys = ["layers", "layer", "colormap", "scale", "symmetric", "sample", "num_samples", "predictions"] as const;
  const scanKeys = ["scan_info", "scan_label", "scan_pair"] as const;
  return {
    update(changed) {
      if (!touched(changed, ...keys, ...scanKeys, "sort", "top_k", "gradcam", "groups")) return;
      const covered = store.get("scan_info")?.layers.includes(store.get("layer")) ?? false;
      controls.update({
        layers: store.get("layers"),
        layer: store.get("layer"),
        colormap: store.get("colormap"),
        scale: store.get("scale"),
        symmetric: store.get("symmetric"),
        sample: store.get("sample"),
        numSamples: store.get("num_samples"),
        predictions: store.get("predictions"),
        sort: store.get("sort"),
        topK: store.get("top_k"),
        gradcam: store.get("gradcam"),
        groups: store.get("groups"),
        scanSorts: {
          dataset: covered,
          selectivity: covered && store.get("scan_label") !== null,
          effect: covered && store.get("scan_pair").length === 2,
        },
      });
    },
    destroy() {
      controls.destroy();
    },
  };
}
