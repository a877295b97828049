/**
 * Which layer the grid holds: follows the layer, sample and revision, takes the layer from the data
 * source (at once when cached), publishes it as `shown` and prefetches the neighbours. Not a view: the
 * grid, header, colorbar and channel view draw what it publishes.
 */
import { layerKey } from "../cache";
import { isCancelled, isDropped, type LoadedLayer } from "../protocol";
import { type Panel, type PanelContext, touched } from "./panel";

export function layersController({ store, source }: PanelContext): Panel {
  let destroyed = false;

  function present(key: string, data: LoadedLayer): void {
    store.batch(() => {
      store.update({ shown: data, shownKey: key, drawn: false, layerError: "", hovered: null });
      // The same cached object again (the layer list changed) is still a layer to draw anew.
      store.touch("shown");
    });
    prefetchNeighbours();
  }

  function prefetchNeighbours(): void {
    const list = store.get("layers");
    const i = list.findIndex((l) => l.name === store.get("layer"));
    if (i < 0) return;
    const names = [list[i + 1], list[i - 1], list[i + 2]].filter((l) => l !== undefined).map((l) => l.name);
    source.prefetch(names, store.get("sample"), store.get("revision"));
  }

  function show(): void {
    const key = store.layerKey();
    const k = layerKey(key);
    // Same layer again (a trait echo): nothing to do, unless an error covers it.
    if (k === store.get("shownKey") && store.get("shown") !== null && store.get("layerError") === "") return;
    if (store.metaOf(key.layer) === undefined) {
      const n = store.get("layers").length;
      const layerError =
        n === 0
          ? "No feature maps were captured: the model produced no 4-D (N, C, H, W) outputs."
          : `Layer "${key.layer}" is not among the ${n} captured layers; pick one with the slider.`;
      store.update({ drawn: false, layerError });
      return;
    }
    store.update({ drawn: false, layerError: "" });
    const hit = source.peekLayer(key);
    if (hit !== undefined) {
      present(k, hit);
      return;
    }
    source.loadLayer(key).then(
      (data) => {
        if (!destroyed && layerKey(store.layerKey()) === k) present(k, data);
      },
      (e: unknown) => {
        if (destroyed || isDropped(e) || layerKey(store.layerKey()) !== k) return;
        const layerError = isCancelled(e)
          ? `Computing layer "${key.layer}" was cancelled; step away and back to compute it.`
          : `Could not load layer "${key.layer}": ${(e as Error).message}`;
        store.update({ layerError });
      },
    );
  }

  return {
    update(changed) {
      // The effect and scan arrays of every layer depend on the groups, the scan, its label and pair:
      // cached layers are out of date.
      const stale = touched(changed, "revision", "groups", "group_pair", "scan_info", "scan_label", "scan_pair");
      if (stale) source.clearLayers();
      if (stale || changed.has("layers")) store.update({ shownKey: "" });
      if (stale || touched(changed, "layers", "layer", "sample")) show();
    },
    destroy() {
      destroyed = true;
    },
  };
}
