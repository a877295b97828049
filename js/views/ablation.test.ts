import { afterEach, describe, expect, it } from "vitest";
import type { AblationChange } from "../protocol";
import { type AblationBarState, changeSummary, channelList, createAblationBar, formatPoints } from "./ablation";

const CAT: AblationChange = {
  top_before: 285,
  label_before: "Egyptian cat",
  prob_before: 0.712,
  top_after: 281,
  label_after: "tabby",
  prob_after: 0.45,
  prob_change: -0.311,
};

describe("ablation text", () => {
  it("lists few channels, counts many", () => {
    expect(channelList([3])).toBe("channel 3");
    expect(channelList([3, 7, 12])).toBe("channels 3, 7, 12");
    expect(channelList(Array.from({ length: 20 }, (_, c) => c))).toBe("20 channels (0, 1, 2, 3, 4, 5, …)");
  });

  it("signs percentage points with a true minus and rounds tiny changes to zero", () => {
    expect(formatPoints(-0.311)).toBe("−31.1 pts");
    expect(formatPoints(0.02)).toBe("+2.0 pts");
    expect(formatPoints(-0.0004)).toBe("0.0 pts");
  });

  it("says how the predicted class's probability moved and names a new top class", () => {
    expect(changeSummary(CAT)).toBe("Egyptian cat 71.2% → 40.1% (−31.1 pts) · now tabby 45.0%");
    const same = {
      ...CAT,
      label_before: null,
      label_after: null,
      top_after: 285,
      prob_after: 0.65,
      prob_change: -0.062,
    };
    expect(changeSummary(same)).toBe("class 285 71.2% → 65.0% (−6.2 pts) · still the top class");
  });
});

describe("ablation row", () => {
  const hosts: HTMLElement[] = [];
  afterEach(() => {
    for (const h of hosts.splice(0)) h.remove();
  });

  function mount(): { bar: ReturnType<typeof createAblationBar>; calls: string[]; root: HTMLElement } {
    const root = document.createElement("div");
    document.body.append(root);
    hosts.push(root);
    const calls: string[] = [];
    const bar = createAblationBar(root, {
      onAblate: () => calls.push("ablate"),
      onDismiss: () => calls.push("dismiss"),
      onShowLayer: (name) => calls.push(`show ${name}`),
    });
    return { bar, calls, root };
  }

  const state = (extra: Partial<AblationBarState> = {}): AblationBarState => ({
    ablation: null,
    sample: 0,
    numSamples: 1,
    layer: "conv1",
    selected: [],
    pending: false,
    error: "",
    ...extra,
  });

  it("stays hidden with nothing to show", () => {
    const { bar } = mount();
    bar.update(state());
    expect(bar.element.hidden).toBe(true);
  });

  it("shows names as text and says when the model has no class scores", () => {
    const { bar, root, calls } = mount();
    const layer = '<img src=x onerror="alert(1)">';
    bar.update(state({ ablation: { layer, channels: [2], changes: null } }));
    expect(root.querySelector("img")).toBeNull();
    expect(bar.element.querySelector('[role="status"]')!.textContent).toBe(
      `Zeroed channel 2 of ${layer}: the model outputs no (N, classes) scores, so there is no prediction to compare.`,
    );
    const show = bar.element.querySelector<HTMLButtonElement>('[aria-label="Show the ablated layer"]')!;
    expect(show.hidden).toBe(false);
    show.click();
    bar.element.querySelector<HTMLButtonElement>('[aria-label="Dismiss ablation"]')!.click();
    expect(calls).toEqual([`show ${layer}`, "dismiss"]);
  });

  it("offers the button for a selection and disables it while the kernel ablates", () => {
    const { bar, calls } = mount();
    const button = bar.element.querySelector<HTMLButtonElement>('[aria-label="Ablate selected channels"]')!;
    bar.update(state({ selected: [4] }));
    expect(bar.element.hidden).toBe(false);
    expect(bar.element.textContent).toContain("1 channel selected");
    expect(button.title).toBe("Zero channel 4 of conv1, re-run the model and compare the prediction");
    button.click();
    expect(calls).toEqual(["ablate"]);
    bar.update(state({ selected: [4], pending: true }));
    expect(button.disabled).toBe(true);
    expect(button.textContent).toBe("Ablating…");
  });

  it("offers no ablation in a saved file (no kernel), yet shows one made before saving", () => {
    const { bar } = mount();
    const button = bar.element.querySelector<HTMLButtonElement>('[aria-label="Ablate selected channels"]')!;
    bar.update(state({ selected: [4], live: false }));
    expect(bar.element.hidden).toBe(true);
    expect(button.hidden).toBe(true);
    bar.update(state({ selected: [4], live: false, ablation: { layer: "conv1", channels: [2], changes: null } }));
    expect(bar.element.hidden).toBe(false);
    expect(button.hidden).toBe(true);
  });

  it("says a cancelled ablation was cancelled, not that it failed", () => {
    const { bar, calls } = mount();
    bar.update(state({ cancelled: true }));
    expect(bar.element.hidden).toBe(false);
    expect(bar.element.textContent).toContain("Ablation cancelled: the model is as it was.");
    expect(bar.element.querySelector('[role="alert"]')).toBeNull();
    bar.element.querySelector<HTMLButtonElement>('[aria-label="Dismiss ablation"]')!.click();
    expect(calls).toEqual(["dismiss"]);
    bar.update(state());
    expect(bar.element.hidden).toBe(true);
  });
});
