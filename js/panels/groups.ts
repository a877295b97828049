/** The group bar panel: the compared pair, counts, the strongest channel and example inputs per group. */
import { createGroupBar } from "../views/groups";
import { type Panel, type PanelContext, touched } from "./panel";

export function groupsPanel({ store }: PanelContext, container: HTMLElement): Panel {
  const bar = createGroupBar(container, {
    onPair: (pair) => store.set({ group_pair: pair }),
    onSample: (sample) => store.set({ sample }),
  });
  return {
    update(changed) {
      if (!touched(changed, "groups", "group_pair", "shown")) return;
      const shown = store.get("shown");
      bar.update({
        groups: store.get("groups"),
        pair: store.get("group_pair"),
        info: shown?.groups ?? null,
        effect: shown?.effect ?? null,
      });
    },
    destroy() {
      bar.destroy();
    },
  };
}
