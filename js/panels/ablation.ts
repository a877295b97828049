/**
 * The ablation panel: shows the last ablation (the `ablation` trait) for the shown sample and sends
 * "Ablate selected" (one request at a time); its failure is shown until dismissed or replaced.
 */
import { isCancelled, isDropped } from "../protocol";
import { createAblationBar } from "../views/ablation";
import { type Panel, type PanelContext, touched } from "./panel";

export function ablationPanel({ store, source }: PanelContext, container: HTMLElement): Panel {
  let pending = false;
  let error = "";
  let cancelled = false;
  let destroyed = false;
  const bar = createAblationBar(container, {
    onAblate: ablate,
    onDismiss: () => {
      error = "";
      cancelled = false;
      if (store.get("ablation") !== null) store.set({ ablation: null });
      draw();
    },
    onShowLayer: (name) => store.set({ layer: name }),
  });

  function draw(): void {
    bar.update({
      ablation: store.get("ablation"),
      sample: store.get("sample"),
      numSamples: store.get("num_samples"),
      layer: store.get("layer"),
      selected: store.get("selected"),
      pending,
      error,
      cancelled,
      live: source.live,
    });
  }

  /** The kernel zeroes the channels, re-runs the model and sets the `ablation` trait. */
  function ablate(): void {
    const channels = [...store.get("selected")];
    if (channels.length === 0 || pending) return;
    pending = true;
    error = "";
    cancelled = false;
    draw();
    source.ablate({ layer: store.get("layer"), channels }).then(
      () => {
        pending = false;
        if (!destroyed) draw();
      },
      (e: unknown) => {
        pending = false;
        if (destroyed) return;
        if (isCancelled(e)) cancelled = true;
        else if (!isDropped(e)) error = (e as Error).message;
        draw();
      },
    );
  }

  return {
    update(changed) {
      // A new ablation (from Python or the button) replaces an error shown for an earlier try.
      if (changed.has("ablation") && store.get("ablation") !== null) {
        error = "";
        cancelled = false;
      }
      if (touched(changed, "ablation", "sample", "num_samples", "layer", "selected")) draw();
    },
    destroy() {
      destroyed = true;
      bar.destroy();
    },
  };
}
