/**
 * The step bar panel: the `steps`, `step` and `now_label` traits drawn as a slider, the user's step written
 * back to `step` (the kernel re-runs the model at that step).
 */
import { createStepBar } from "../views/steps";
import { type Panel, type PanelContext, touched } from "./panel";

export function stepsPanel({ store, source }: PanelContext, container: HTMLElement): Panel {
  const bar = createStepBar(container, (step) => store.set({ step }));
  return {
    update(changed) {
      if (!touched(changed, "steps", "step", "now_label")) return;
      bar.update({
        steps: store.get("steps"),
        step: store.get("step"),
        nowLabel: store.get("now_label"),
        live: source.live,
      });
    },
    destroy() {
      bar.destroy();
    },
  };
}
