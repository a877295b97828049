/**
 * The kernel's long job (the `task` trait, docs/protocol.md "Long work"): what runs, how far it is, a
 * progress bar, the time it has taken, and a Cancel button. The status panel puts it in the banner above
 * the grid, where "Kernel busy" would otherwise be. Names are text.
 *
 * @example
 *   const bar = createTaskBar(banner, { onCancel: (id) => source.cancel?.(id) });
 *   bar.update(store.get("task"), performance.now());
 */
import { el } from "../dom";
import type { TaskState } from "../protocol";

/**
 * How far a job is, in words.
 *
 * @example
 *   taskProgress({ label: "Score-CAM on features.18", done: 120, total: 1280, unit: "channels", ... });
 *   // "Score-CAM on features.18: 120 / 1,280 channels"
 *   taskProgress({ label: "Ablation of 2 channels of conv1", done: 1, total: 2, unit: "forwards", ... });
 *   // "Ablation of 2 channels of conv1: forward 2 of 2"
 */
export function taskProgress(task: TaskState): string {
  const n = (x: number): string => x.toLocaleString("en-US");
  if (task.total <= 0) return `${task.label}: starting…`;
  // A job of a forward or two reads as which forward runs, not as a fraction.
  if (task.unit === "forwards" && task.total <= 2)
    return `${task.label}: forward ${Math.min(task.done + 1, task.total)} of ${task.total}`;
  return `${task.label}: ${n(task.done)} / ${n(task.total)} ${task.unit}`;
}

/**
 * Seconds as the banner shows them.
 *
 * @example
 *   formatElapsed(7.4);  // "7 s"
 *   formatElapsed(65);   // "1 min 05 s"
 */
export function formatElapsed(seconds: number): string {
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return `${s} s`;
  return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s`;
}

export interface TaskBar {
  readonly element: HTMLElement;
  /**
   * Shows `task` (null hides the bar); `now` is `performance.now()`. The elapsed time counts on from the
   * kernel's last figure between its updates (a single forward can take seconds).
   */
  update(task: TaskState | null, now: number): void;
  /** Redraws the elapsed time only (call about once a second while a job runs). */
  tick(now: number): void;
  destroy(): void;
}

/**
 * Builds the (hidden) job bar inside `container`; Cancel calls `onCancel` with the job's request id once.
 *
 * @example
 *   const bar = createTaskBar(banner, { onCancel: (id) => source.cancel?.(id) });
 */
export function createTaskBar(container: HTMLElement, handlers: { onCancel(id: number | null): void }): TaskBar {
  const element = el("div", "fm-task");
  element.setAttribute("aria-label", "Kernel job");
  element.hidden = true;
  const text = el("span", "fm-task-text");
  const bar = el("progress", "fm-task-bar");
  bar.setAttribute("aria-label", "Job progress");
  const elapsed = el("span", "fm-task-elapsed");
  const cancel = el("button", "fm-button fm-task-cancel", "Cancel");
  cancel.type = "button";
  element.append(text, bar, elapsed, cancel);
  container.append(element);

  let task: TaskState | null = null;
  let seenAt = 0;
  let cancelling: number | null | undefined; // the id Cancel was pressed for (undefined: none)

  const onCancel = (): void => {
    if (task === null) return;
    cancelling = task.id;
    cancel.disabled = true;
    cancel.textContent = "Cancelling…";
    handlers.onCancel(task.id);
  };
  cancel.addEventListener("click", onCancel);

  function tick(now: number): void {
    if (task !== null) elapsed.textContent = formatElapsed(task.elapsed + (now - seenAt) / 1000);
  }

  return {
    element,
    update(next: TaskState | null, now: number): void {
      const sameJob = task !== null && next !== null && task.id === next.id && task.label === next.label;
      task = next;
      seenAt = now;
      element.hidden = next === null;
      if (next === null) return;
      text.textContent = taskProgress(next);
      text.title = text.textContent;
      if (next.total > 0) {
        bar.max = next.total;
        bar.value = next.done;
      } else {
        // No value: an indeterminate bar while the total is not known.
        bar.removeAttribute("value");
      }
      if (!sameJob) cancelling = undefined;
      cancel.disabled = cancelling === next.id;
      cancel.textContent = cancelling === next.id ? "Cancelling…" : "Cancel";
      cancel.title = `Stop ${next.label}; the model is left as it was`;
      tick(now);
    },
    tick,
    destroy(): void {
      cancel.removeEventListener("click", onCancel);
      element.remove();
    },
  };
}
