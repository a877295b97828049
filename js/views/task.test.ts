import { afterEach, describe, expect, it } from "vitest";
import type { TaskState } from "../protocol";
import { createTaskBar, formatElapsed, taskProgress } from "./task";

const TASK: TaskState = { id: 3, label: "Score-CAM on layer4", done: 0, total: 0, unit: "channels", elapsed: 0 };

afterEach(() => {
  document.body.replaceChildren();
});

describe("taskProgress", () => {
  it("says what runs and how far it is", () => {
    expect(taskProgress({ ...TASK, done: 120, total: 1280 })).toBe("Score-CAM on layer4: 120 / 1,280 channels");
    expect(taskProgress(TASK)).toBe("Score-CAM on layer4: starting…");
    const ablation = { ...TASK, label: "Ablation of channel 3 of conv1", unit: "forwards", total: 2 };
    expect(taskProgress(ablation)).toBe("Ablation of channel 3 of conv1: forward 1 of 2");
    expect(taskProgress({ ...ablation, done: 2 })).toBe("Ablation of channel 3 of conv1: forward 2 of 2");
  });
});

describe("formatElapsed", () => {
  it("reads as seconds, then minutes and seconds", () => {
    expect(formatElapsed(0.4)).toBe("0 s");
    expect(formatElapsed(59.9)).toBe("59 s");
    expect(formatElapsed(65)).toBe("1 min 05 s");
  });
});

describe("createTaskBar", () => {
  it("draws an open-ended bar while the total is not known, and hides for null", () => {
    const bar = createTaskBar(document.body, { onCancel: () => {} });
    bar.update(TASK, 0);
    const progress = bar.element.querySelector("progress")!;
    expect(bar.element.hidden).toBe(false);
    expect(progress.hasAttribute("value")).toBe(false);
    bar.update({ ...TASK, done: 16, total: 96 }, 0);
    expect(progress.value).toBe(16);
    bar.update(null, 0);
    expect(bar.element.hidden).toBe(true);
  });

  it("keeps names as text", () => {
    const bar = createTaskBar(document.body, { onCancel: () => {} });
    bar.update({ ...TASK, label: "Score-CAM on <img src=x onerror=alert(1)>" }, 0);
    expect(bar.element.querySelector("img")).toBeNull();
    expect(bar.element.textContent).toContain("<img src=x onerror=alert(1)>");
  });

  it("counts on from the kernel's elapsed figure", () => {
    const bar = createTaskBar(document.body, { onCancel: () => {} });
    bar.update({ ...TASK, elapsed: 10 }, 1000);
    bar.tick(6000);
    expect(bar.element.querySelector(".fm-task-elapsed")!.textContent).toBe("15 s");
  });
});
