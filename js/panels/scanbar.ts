/** The dataset bar panel: the scan's size, the class picker (`scan_label`) and the pair picker (`scan_pair`). */
import { createScanBar } from "../views/scanbar";
import { type Panel, type PanelContext, touched } from "./panel";

export function scanBarPanel({ store }: PanelContext, container: HTMLElement): Panel {
  const bar = createScanBar(container, {
    onLabel: (label) => store.set({ scan_label: label }),
    onPair: (pair) => store.set({ scan_pair: pair }),
  });
  return {
    update(changed) {
      if (!touched(changed, "scan_info", "scan_label", "scan_pair", "layer", "shown", "shownKey")) return;
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
