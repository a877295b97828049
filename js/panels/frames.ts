/**
 * The frame bar panel: the `frames` and `frame` traits of a video model drawn as a slider with play, the
 * user's frame written back to `frame` (the kernel re-runs the model at that frame; every layer follows).
 */
import { createFrameBar } from "../views/frames";
import { type Panel, type PanelContext, touched } from "./panel";

export function framesPanel({ store, source }: PanelContext, container: HTMLElement): Panel {
  const bar = createFrameBar(container, (frame) => store.set({ frame }));
  return {
    update(changed) {
      if (!touched(changed, "frames", "frame", "layer", "layers", "revision", "drawn")) return;
      const meta = store.get("layers").find((m) => m.name === store.get("layer"));
      bar.update({
        frames: store.get("frames"),
        frame: store.get("frame"),
        layerFrames: meta?.frames ?? 0,
        layerFrame: meta?.frame ?? 0,
        live: source.live,
        revision: store.get("revision"),
        drawn: store.get("drawn"),
      });
    },
    destroy() {
      bar.destroy();
    },
  };
}
