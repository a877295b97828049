/**
 * The colorbar panel: the scale of the tile under the pointer (or of the open channel, or the first
 * one) for "channel" scale, of the layer or of all layers otherwise.
 */
import { statOf } from "../protocol";
import { displayRange } from "../scale";
import { createColorbar } from "../views/colorbar";
import { type Panel, type PanelContext, touched } from "./panel";

export function colorbarPanel({ store }: PanelContext, container: HTMLElement): Panel {
  const colorbar = createColorbar(container);

  function draw(): void {
    const scope = store.get("scale");
    const shown = store.get("shown");
    const meta = store.metaOf(store.get("layer"));
    let channel = store.get("hovered") ?? store.get("channel") ?? (shown !== null && shown.channels > 0 ? 0 : null);
    if (shown !== null && channel !== null && channel >= shown.channels) channel = null;
    const cMin = shown !== null && channel !== null ? statOf(shown.stats, channel, "min") : 0;
    const cMax = shown !== null && channel !== null ? statOf(shown.stats, channel, "max") : 0;
    const [gMin, gMax] = store.globalRange();
    const lMin = shown?.layerMin ?? meta?.min ?? 0;
    const lMax = shown?.layerMax ?? meta?.max ?? 0;
    const [lo, hi] = displayRange(scope, store.get("symmetric"), cMin, cMax, lMin, lMax, gMin, gMax);
    const label =
      scope === "channel"
        ? channel === null
          ? "per channel"
          : `channel ${channel}`
        : scope === "layer"
          ? "this layer"
          : "all layers";
    colorbar.update(store.get("colormap"), lo, hi, label);
  }

  return {
    update(changed) {
      // The pointer moving between tiles only changes a "channel" scale.
      if (changed.has("hovered") && changed.size === 1 && store.get("scale") !== "channel") return;
      if (
        touched(changed, "colormap", "scale", "symmetric", "layers", "layer", "hovered", "channel", "shown", "theme")
      ) {
        draw();
      }
    },
    destroy() {
      colorbar.destroy();
    },
  };
}
