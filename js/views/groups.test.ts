import { afterEach, describe, expect, it } from "vitest";
import { createGroupBar, distinctLabels, pairOptions, strongestChannel } from "./groups";

describe("group helpers", () => {
  it("lists labels in order of appearance and the pairs among them", () => {
    expect(distinctLabels(["b", "a", "b", "c"])).toEqual(["b", "a", "c"]);
    expect(pairOptions(["a", "b", "c"], [])).toEqual([
      ["a", "b"],
      ["a", "c"],
      ["b", "c"],
    ]);
    expect(pairOptions(["a", "b"], ["b", "a"])).toEqual([
      ["a", "b"],
      ["b", "a"],
    ]);
  });

  it("finds the channel with the largest |d|, skipping NaN", () => {
    expect(strongestChannel(new Float32Array([0.2, -1.5, Number.NaN, 1.1]))).toEqual({ channel: 1, d: -1.5 });
    expect(strongestChannel(new Float32Array([Number.NaN]))).toBeNull();
  });
});

describe("group bar", () => {
  const hosts: HTMLElement[] = [];
  afterEach(() => {
    for (const h of hosts.splice(0)) h.remove();
  });

  it("shows the pair, counts and strongest channel, and its buttons and select report the user's choice", () => {
    const root = document.createElement("div");
    document.body.append(root);
    hosts.push(root);
    const calls: unknown[] = [];
    const bar = createGroupBar(root, { onPair: (p) => calls.push(p), onSample: (i) => calls.push(i) });
    bar.update({ groups: [], pair: [], info: null, effect: null });
    expect(bar.element.hidden).toBe(true);
    bar.update({
      groups: ["<b>x</b>", "y", "z", "y"],
      pair: ["<b>x</b>", "y"],
      info: { pair: ["<b>x</b>", "y"], counts: { "<b>x</b>": 1, y: 2 }, examples: { "<b>x</b>": [0], y: [3, 1] } },
      effect: new Float32Array([0.1, 2.5, -0.3]),
    });
    expect(bar.element.hidden).toBe(false);
    expect(root.querySelector("b")).toBeNull();
    expect(bar.element.textContent).toContain("n = 1 vs 2");
    expect(bar.element.textContent).toContain("channel 1, d = +2.5");
    const buttons = [...root.querySelectorAll("button")];
    expect(buttons.map((b) => b.textContent)).toEqual(["example of <b>x</b>", "example of y"]);
    buttons[1].click();
    buttons[0].click();
    const select = root.querySelector<HTMLSelectElement>('select[aria-label="Group pair"]')!;
    expect(Array.from(select.options).map((o) => o.textContent)).toEqual(["<b>x</b> vs y", "<b>x</b> vs z", "y vs z"]);
    select.value = select.options[2].value;
    select.dispatchEvent(new Event("change"));
    expect(calls).toEqual([3, 0, ["y", "z"]]);
  });
});
