/**
 * The channel view panel: opens the `channel` trait's channel of the current layer (following layer,
 * sample and capture), redraws it with the current colormap, scale and theme, and steps or closes it.
 * With a dataset scan of the layer it also lists the channel's top dataset examples (clicking one makes
 * it the input), fed by the data source.
 */
import { createDetail } from "../views/detail";
import { type Panel, type PanelContext, touched } from "./panel";

export interface DetailPanel extends Panel {
  /** ←, → and Esc while a channel is open; returns whether the key was used. */
  handleKey(ev: KeyboardEvent): boolean;
}

export function detailPanel(
  { store, source }: PanelContext,
  container: HTMLElement,
  focusTile: (channel: number) => void,
): DetailPanel {
  const detail = createDetail(container, {
    source,
    revision: () => store.get("revision"),
    scan: () => store.get("scan_info"),
    sample: () => store.get("sample"),
    layer: () => store.metaOf(store.get("layer")),
    colormap: () => store.get("colormap"),
    scope: () => store.get("scale"),
    symmetric: () => store.get("symmetric"),
    globalRange: () => store.globalRange(),
    // The grid may still hold another layer (or an older capture) than the channel shown.
    flags: (c, layer) => {
      const shown = store.shownCurrent();
      return shown !== null && shown.layer === layer && c < shown.flags.length ? shown.flags[c] : undefined;
    },
    onNavigate: (c) =>
      store.batch(() => {
        if (c !== null) {
          store.update({ cursor: c });
          focusTile(c);
        }
        store.set({ channel: c });
      }),
  });
  return {
    handleKey: (ev) => detail.handleKey(ev),
    update(changed) {
      const channel = store.get("channel");
      if (changed.has("channel") && channel !== null) store.update({ cursor: channel });
      // A layer that is not captured leaves the channel as it is (the view says what is wrong).
      const known = store.metaOf(store.get("layer")) !== undefined;
      if (
        touched(changed, "channel", "layer", "sample", "revision", "layers", "scan_info") &&
        (known || channel === null)
      ) {
        detail.show(channel);
      }
      // Its health row reads the flags of the layer just shown.
      if (touched(changed, "colormap", "scale", "symmetric", "layers", "theme", "shown")) detail.redraw();
    },
    destroy() {
      detail.destroy();
    },
  };
}
