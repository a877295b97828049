/**
 * The status panel: the root's `data-state` / `data-layer` / `data-kernel` hooks (docs/protocol.md), the
 * loading or error message over the grid, and the banner that says the kernel is busy or gone, or shows
 * the kernel's long job (progress and Cancel) instead: requests wait behind that job, and no cell runs.
 */
import { el } from "../dom";
import { createTaskBar } from "../views/task";
import { type Panel, type PanelContext, touched } from "./panel";

export function statusPanel(
  { store, source }: PanelContext,
  root: HTMLElement,
  banner: HTMLElement,
  stage: HTMLElement,
): Panel {
  const message = el("div", "fm-message");
  const messageText = el("div", "fm-message-text");
  message.append(el("div", "fm-spinner"), messageText);
  stage.append(message);
  banner.setAttribute("role", "status");
  const bannerText = el("span", "fm-banner-text");
  banner.append(bannerText);
  const taskBar = createTaskBar(banner, { onCancel: (id) => source.cancel?.(id) });
  let ticker: ReturnType<typeof setInterval> | undefined;

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
    // Replies overdue while the kernel's own job runs wait behind it, not behind a cell.
    const task = gone ? null : store.get("task");
    const busy = task === null && (store.get("kernelBusy") || status.state === "busy");
    bannerText.textContent = gone
      ? "The kernel restarted or stopped, so this view can no longer update: run its cell again."
      : busy
        ? status.state === "busy" && status.message
          ? status.message
          : "Kernel busy: the view updates when the running cell finishes."
        : "";
    bannerText.hidden = bannerText.textContent === "";
    taskBar.update(task, performance.now());
    banner.hidden = !(gone || busy || task !== null);
    root.dataset.kernel = gone ? "gone" : "live";
    // The elapsed time counts on between the kernel's updates.
    if (task !== null && ticker === undefined) ticker = setInterval(() => taskBar.tick(performance.now()), 1000);
    if (task === null && ticker !== undefined) {
      clearInterval(ticker);
      ticker = undefined;
    }
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
      if (touched(changed, "status", "kernelBusy", "kernelGone", "task")) showKernel();
    },
    destroy() {
      clearInterval(ticker);
      taskBar.destroy();
      bannerText.remove();
      message.remove();
    },
  };
}
