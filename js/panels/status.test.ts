import { afterEach, describe, expect, it, vi } from "vitest";
import type { TaskState, Traits } from "../protocol";
import type { DataSource } from "../source";
import { Store, type StoreModel } from "../store";
import { statusPanel } from "./status";

/** Traits the test sets; every other one reads as the store's default. */
class TraitModel implements StoreModel {
  attrs: Partial<Traits> = {};
  private handlers = new Map<string, Set<() => void>>();
  get<K extends keyof Traits>(key: K): Traits[K] {
    return this.attrs[key] as Traits[K];
  }
  set<K extends keyof Traits>(key: K, value: Traits[K]): void {
    this.attrs[key] = value;
  }
  save_changes(): void {}
  on(event: string, cb: () => void): void {
    if (!this.handlers.has(event)) this.handlers.set(event, new Set());
    this.handlers.get(event)?.add(cb);
  }
  off(event: string, cb: () => void): void {
    this.handlers.get(event)?.delete(cb);
  }
  /** The kernel changing a trait: `change:<key>`, then `change`, as Backbone fires them. */
  kernelSets<K extends keyof Traits>(key: K, value: Traits[K]): void {
    this.attrs[key] = value;
    for (const cb of this.handlers.get(`change:${key}`) ?? []) cb();
    for (const cb of this.handlers.get("change") ?? []) cb();
  }
}

const SCORECAM: TaskState = {
  id: 41,
  label: "Score-CAM on features.18",
  done: 120,
  total: 1280,
  unit: "channels",
  elapsed: 3.2,
};

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const c of cleanups.splice(0)) c();
});

function setup(): { model: TraitModel; store: Store; banner: HTMLElement; cancel: ReturnType<typeof vi.fn> } {
  const model = new TraitModel();
  const store = new Store(model);
  const root = document.createElement("div");
  const banner = document.createElement("div");
  const stage = document.createElement("div");
  root.append(banner, stage);
  document.body.append(root);
  const cancel = vi.fn();
  const source = { live: true, cancel } as unknown as DataSource;
  const panel = statusPanel({ store, source }, root, banner, stage);
  store.subscribe((changed) => panel.update(changed));
  store.notifyAll();
  cleanups.push(() => {
    panel.destroy();
    store.destroy();
    root.remove();
  });
  return { model, store, banner, cancel };
}

/** What a person sees in the banner (hidden parts left out). */
function visibleText(banner: HTMLElement): string {
  // biome-ignore lint/performance/useDomNodeTextContent: the test is about what shows, so hidden parts must not count.
  return banner.innerText.replace(/\s+/g, " ").trim();
}

describe("status panel: the kernel's job", () => {
  it("says a cell runs only when no job of ours explains the wait", () => {
    const { model, store, banner } = setup();
    expect(banner.hidden).toBe(true);
    store.update({ kernelBusy: true });
    expect(banner.hidden).toBe(false);
    expect(visibleText(banner)).toBe("Kernel busy: the view updates when the running cell finishes.");

    model.kernelSets("task", SCORECAM);
    const text = visibleText(banner);
    expect(text).toContain("Score-CAM on features.18: 120 / 1,280 channels");
    expect(text).toContain("3 s");
    expect(text).not.toContain("Kernel busy");
    const bar = banner.querySelector<HTMLProgressElement>('progress[aria-label="Job progress"]')!;
    expect([bar.value, bar.max]).toEqual([120, 1280]);

    model.kernelSets("task", null);
    expect(visibleText(banner)).toBe("Kernel busy: the view updates when the running cell finishes.");
    store.update({ kernelBusy: false });
    expect(banner.hidden).toBe(true);
  });

  it("sends one cancel for the job from its Cancel button", () => {
    const { model, banner, cancel } = setup();
    model.kernelSets("task", SCORECAM);
    const button = [...banner.querySelectorAll("button")].find((b) => b.textContent === "Cancel")!;
    expect(button.hidden).toBe(false);
    button.click();
    button.click();
    expect(cancel).toHaveBeenCalledTimes(1);
    expect(cancel).toHaveBeenCalledWith(41);
    expect(button.disabled).toBe(true);
    expect(button.textContent).toBe("Cancelling…");
    // Progress still arriving does not re-enable it; the next job starts with a fresh button.
    model.kernelSets("task", { ...SCORECAM, done: 136 });
    expect(button.disabled).toBe(true);
    model.kernelSets("task", {
      ...SCORECAM,
      id: 42,
      label: "Ablation of 2 channels of conv1",
      total: 2,
      done: 0,
      unit: "forwards",
    });
    expect(button.disabled).toBe(false);
    expect(visibleText(banner)).toContain("Ablation of 2 channels of conv1: forward 1 of 2");
  });

  it("counts the elapsed time on between the kernel's updates", () => {
    vi.useFakeTimers();
    try {
      const { model, banner } = setup();
      model.kernelSets("task", { ...SCORECAM, elapsed: 58 });
      expect(visibleText(banner)).toContain("58 s");
      vi.advanceTimersByTime(3000);
      expect(visibleText(banner)).toContain("1 min 01 s");
    } finally {
      vi.useRealTimers();
    }
  });
});
