/**
 * The dataset bar panel: the scan's size, the class picker (`scan_label`), the pair picker (`scan_pair`)
 * and, for a pair, pictures of each group's example images from the data source.
 */
import { createScanBar } from "../views/scanbar";
import { type Panel, type PanelContext, touched } from "./panel";

export function scanBarPanel({ store, source }: PanelContext, container: HTMLElement): Panel {
  const bar = createScanBar(
    container,
    {
      onLabel: (label) => store.set({ scan_label: label }),
      onPair: (pair) => store.set({ scan_pair: pair }),
    },
    { source, revision: () => store.get("revision") },
  );
  return {
    update(changed) {
      if (!touched(changed, "scan_info", "scan_label", "scan_pair", "layer", "shown", "shownKey", "revision")) return;
      const shown = store.shownCurrent();
      bar.update({
        info: store.get("scan_info"),
        label: store.get("scan_label"),
        pair: store.get("scan_pair"),
        layer: store.get("layer"),
        scan: shown?.scan ?? null,
      });
    },
    destroy() {
      bar.destroy();
    },
  };
}
