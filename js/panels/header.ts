/**
 * The header panel: names the current layer (or the one under a dragged slider thumb) with its shape,
 * health, downsample badge and activation partner, marks it while it is not drawn, and shows the top
 * prediction of the shown sample.
 */
import { createHeader } from "../views/header";
import { type Panel, type PanelContext, touched } from "./panel";

export function headerPanel({ store }: PanelContext, container: HTMLElement): Panel {
  const header = createHeader(container, { onLayer: (name) => store.set({ layer: name }) });
  return {
    update(changed) {
      if (touched(changed, "preview", "layer", "layers", "shown", "shownKey", "revision", "sample", "scan_info")) {
        const name = store.get("preview") ?? store.get("layer");
        const meta = store.metaOf(name);
        const shown = store.shownCurrent();
        const here = shown !== null && shown.layer === name ? shown : null;
        header.update(meta, here?.downsample ?? 1, store.partnerOf(meta), here?.scan ?? null);
      }
      // The header names the layer at once (even the one under a dragged thumb); the mark says it is not drawn yet.
      const preview = store.get("preview");
      header.setPending(
        store.error() === "" && (!store.get("drawn") || (preview !== null && preview !== store.get("layer"))),
      );
      if (changed.has("training")) header.setTraining(store.get("training"));
      if (touched(changed, "predictions", "sample"))
        header.setPrediction(store.get("predictions")[store.get("sample")]?.[0] ?? null);
    },
    destroy() {
      header.element.remove();
    },
  };
}
