/**
 * The status panel: the root's `data-state` / `data-layer` / `data-kernel` hooks (docs/protocol.md), the
 * loading or error message over the grid, and the banner that says the kernel is busy or gone.
 */
import { el } from "../dom";
import { type Panel, type PanelContext, touched } from "./panel";

export function statusPanel(
  { store }: PanelContext,
  root: HTMLElement,
  banner: HTMLElement,
  stage: HTMLElement,
): Panel {
  const message = el("div", "fm-message");
  const messageText = el("div", "fm-message-text");
  message.append(el("div", "fm-spinner"), messageText);
  stage.append(message);
  banner.setAttribute("role", "status");

  function showState(): void {
    const error = store.error();
    const drawn = store.get("drawn");
    const layer = store.get("layer");
    root.dataset.state = error ? "error" : drawn ? "ready" : "loading";
    // For automation: which layer the "ready" refers to (the grid drawn is this layer's).
    if (!error && drawn) root.dataset.layer = layer;
    messageText.textContent = error || (layer ? `Loading ${layer}…` : "Loading…");
    if (error) message.setAttribute("role", "alert");
    else message.removeAttribute("role");
    // A cached layer is drawn within a frame: no spinner flash for it.
    message.hidden = !error && (drawn || store.shownCurrent() !== null);
    message.classList.toggle("fm-message-error", Boolean(error));
  }

  function showKernel(): void {
    const status = store.get("status");
    const gone = store.get("kernelGone");
    const busy = store.get("kernelBusy") || status.state === "busy";
    banner.textContent = gone
      ? "The kernel restarted or stopped, so this view can no longer update: run its cell again."
      : busy
        ? status.state === "busy" && status.message
          ? status.message
          : "Kernel busy: the view updates when the running cell finishes."
        : "";
    banner.hidden = !(gone || busy);
    root.dataset.kernel = gone ? "gone" : "live";
  }

  return {
    update(changed) {
      if (
        touched(
          changed,
          "drawn",
          "layerError",
          "gridError",
          "status",
          "layer",
          "shown",
          "shownKey",
          "revision",
          "sample",
        )
      ) {
        showState();
      }
      if (touched(changed, "status", "kernelBusy", "kernelGone")) showKernel();
    },
    destroy() {
      message.remove();
    },
  };
}
