/**
 * The Grad-CAM panel: asks the data source for the shown layer's map when the panel is open or the tiles
 * are sorted by its weights, shows it over the input picture, and reports each outcome to the store
 * (`camReady` / `camError`) so the grid can order and badge its tiles.
 */
import { layerKey } from "../cache";
import { isCancelled, isDropped } from "../protocol";
import { createGradcamPanel } from "../views/gradcam";
import { type Panel, type PanelContext, touched } from "./panel";

export function gradcamPanel({ store, source }: PanelContext, container: HTMLElement): Panel {
  // Below the grid, above the channel view: the heatmap is read against the tiles' weights.
  const panel = createGradcamPanel(container, {
    onTarget: (target) => store.set({ target }),
    onMethod: (method) => store.set({ cam_method: method }),
    // After a cancel, the same map is asked for again only on request.
    onRetry: () => store.update({ camError: null }),
  });
  let pending = ""; // the cam key of the request in flight
  let inputKey = ""; // revision/sample of the picture under the heatmap
  let destroyed = false;

  /** Asks for the current layer's Grad-CAM when it is wanted; shows what is known. */
  function refresh(): void {
    const open = store.get("gradcam");
    panel.element.hidden = !open;
    const key = store.layerKey();
    if (open) {
      const channels = store.metaOf(key.layer)?.shape[1] ?? 0;
      panel.setMethods(store.get("cam_methods"), store.get("cam_method"), channels);
      panel.setClasses(store.get("predictions")[key.sample] ?? [], store.get("target"));
      requestInput();
    }
    if (!store.camWanted()) return;
    const k = store.camKey(layerKey(key));
    const hit = source.peekGradcam(k);
    if (hit !== undefined) {
      if (open) panel.show(hit);
      return;
    }
    const error = store.get("camError");
    if (error?.key === k) {
      if (open && error.cancelled) panel.showCancelled(key.layer, store.get("cam_method"));
      else if (open) panel.showError(error.text);
      return;
    }
    const method = store.get("cam_method");
    if (open) panel.showLoading(key.layer, method);
    if (pending === k) return;
    pending = k;
    const args = { layer: key.layer, sample: key.sample, target: store.get("target"), method };
    source.gradcam(k, args).then(
      () => {
        if (pending === k) pending = "";
        if (!destroyed) store.update({ camReady: k });
      },
      (e: unknown) => {
        if (pending === k) pending = "";
        if (isDropped(e) || destroyed) return;
        store.update({ camError: { key: k, text: (e as Error).message, cancelled: isCancelled(e) } });
      },
    );
  }

  /** The input picture under the heatmap: once per sample and revision. */
  function requestInput(): void {
    const key = `${store.get("revision")}/${store.get("sample")}`;
    if (inputKey === key) return;
    inputKey = key;
    // The previous sample's picture must not sit under this sample's heatmap while its own loads.
    panel.setInput(null);
    source.input(store.get("sample"), "gradcam-input").then(
      (picture) => {
        if (!destroyed && inputKey === key) panel.setInput(picture);
      },
      (e: unknown) => {
        if (isDropped(e)) {
          if (inputKey === key) inputKey = "";
          return;
        }
        if (destroyed || inputKey !== key) return;
        panel.setInput(null, `No input image (${(e as Error).message}): the heatmap is shown alone.`);
      },
    );
  }

  return {
    update(changed) {
      if (changed.has("revision")) {
        source.clearGradcam();
        pending = "";
        inputKey = "";
      }
      // A failed Grad-CAM is asked again when its layer is shown again, the panel reopens or a capture is new.
      if (touched(changed, "layer", "gradcam", "revision") && store.get("camError") !== null) {
        store.update({ camError: null });
      }
      const keys = [
        "gradcam",
        "target",
        "cam_method",
        "cam_methods",
        "predictions",
        "sort",
        "layer",
        "sample",
      ] as const;
      if (touched(changed, ...keys, "revision", "layers", "camReady", "camError")) refresh();
    },
    destroy() {
      destroyed = true;
      panel.destroy();
    },
  };
}
