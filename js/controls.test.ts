import { afterEach, describe, expect, it } from "vitest";
import { type ControlHandlers, type ControlState, createControls, createHeader, healthSummary, tileOrder } from "./controls";
import type { LayerMeta } from "./protocol";

function meta(name: string, extra: Partial<LayerMeta> = {}): LayerMeta {
  return {
    name,
    module: name,
    call: 1,
    type: "Conv2d",
    shape: [2, 64, 8, 8],
    dtype: "float32",
    min: 0,
    max: 1,
    dead: 0,
    constant: 0,
    nonfinite: 0,
    kind: "conv",
    pre: null,
    post: null,
    filter: true,
    ...extra,
  };
}

/** Stats rows [min, max, mean, zeros, nan, inf] for channels with the given means, maxes and zero fractions. */
function stats(rows: [number, number, number][]): Float32Array {
  const s = new Float32Array(rows.length * 6);
  rows.forEach(([mean, max, zeros], c) => s.set([0, max, mean, zeros, 0, 0], 6 * c));
  return s;
}

describe("tileOrder", () => {
  const s = stats([
    [0.5, 2, 0.1],
    [0.9, 1, 0.8],
    [0.1, 3, 0.0],
    [0.9, 0, 0.5],
  ]);

  it("is null (index order) when nothing is sorted or cut", () => {
    expect(tileOrder("index", s, 4, 0, null)).toBeNull();
  });

  it("sorts by mean, largest first, ties by channel index", () => {
    expect(Array.from(tileOrder("mean", s, 4, 0, null)!)).toEqual([1, 3, 0, 2]);
  });

  it("sorts by max and by fraction of zeros", () => {
    expect(Array.from(tileOrder("max", s, 4, 0, null)!)).toEqual([2, 0, 1, 3]);
    expect(Array.from(tileOrder("zeros", s, 4, 0, null)!)).toEqual([1, 3, 0, 2]);
  });

  it("sorts by Grad-CAM weight and keeps the first k", () => {
    const w = new Float32Array([0.1, -0.5, 0.7, 0.2]);
    expect(Array.from(tileOrder("gradcam", s, 4, 2, w)!)).toEqual([2, 3]);
  });

  it("cuts index order to k", () => {
    expect(Array.from(tileOrder("index", s, 4, 3, null)!)).toEqual([0, 1, 2]);
  });
});

describe("healthSummary", () => {
  it("counts dead, constant and non-finite channels of the layer", () => {
    expect(healthSummary(meta("x", { dead: 12, nonfinite: 2 }))).toBe("12 of 64 channels dead · 2 with NaN/Inf");
    expect(healthSummary(meta("x"))).toBe("all 64 channels alive");
  });
});

describe("controls", () => {
  const containers: HTMLElement[] = [];
  afterEach(() => {
    for (const c of containers.splice(0)) c.remove();
  });

  function mount(): { calls: [string, unknown][]; controls: ReturnType<typeof createControls>; root: HTMLElement } {
    const root = document.createElement("div");
    document.body.append(root);
    containers.push(root);
    const calls: [string, unknown][] = [];
    const record =
      (name: string) =>
      (v: unknown): void => {
        calls.push([name, v]);
      };
    const handlers: ControlHandlers = {
      onLayer: record("layer"),
      onColormap: record("colormap"),
      onScale: record("scale"),
      onSymmetric: record("symmetric"),
      onSample: record("sample"),
      onSort: record("sort"),
      onTopK: record("topK"),
    };
    return { calls, controls: createControls(root, handlers), root };
  }

  const state = (extra: Partial<ControlState> = {}): ControlState => ({
    layers: [meta("conv1"), meta("relu", { type: "ReLU" }), meta('<img src=x onerror="alert(1)">')],
    layer: "conv1",
    colormap: "gray",
    scale: "channel",
    symmetric: false,
    sample: 0,
    numSamples: 1,
    predictions: [],
    sort: "index",
    topK: 0,
    ...extra,
  });

  const nextFrame = (): Promise<void> => new Promise((r) => requestAnimationFrame(() => r()));

  it("labels the slider instantly and sends the layer once per frame, with the latest position", async () => {
    const { calls, controls, root } = mount();
    controls.update(state());
    const slider = root.querySelector<HTMLInputElement>('input[aria-label="Layer"]')!;
    slider.value = "1";
    slider.dispatchEvent(new Event("input"));
    expect(root.querySelector(".fm-layer-name")!.textContent).toBe("relu");
    slider.value = "2";
    slider.dispatchEvent(new Event("input"));
    expect(calls).toEqual([]);
    await nextFrame();
    expect(calls).toEqual([["layer", '<img src=x onerror="alert(1)">']]);
    // The name is text, not markup.
    expect(root.querySelector("img")).toBeNull();
    expect(root.querySelector(".fm-layer-name")!.textContent).toBe('<img src=x onerror="alert(1)">');
  });

  it("shows the sample picker with predictions only for a batch", () => {
    const { controls, root } = mount();
    controls.update(state());
    const picker = root.querySelector<HTMLSelectElement>('select[aria-label="Sample"]')!;
    expect(picker.closest("label")!.hidden).toBe(true);
    controls.update(state({ numSamples: 2, sample: 1, predictions: [[{ index: 285, label: "Egyptian cat", prob: 0.71 }], []] }));
    expect(picker.closest("label")!.hidden).toBe(false);
    expect(Array.from(picker.options).map((o) => o.textContent)).toEqual(["#0 · Egyptian cat 71%", "#1"]);
    expect(picker.value).toBe("1");
  });

  it("reports colormap, scale, symmetric, sort and top-k changes", () => {
    const { calls, controls, root } = mount();
    controls.update(state());
    const change = (sel: string, value: string): void => {
      const input = root.querySelector<HTMLInputElement | HTMLSelectElement>(sel)!;
      input.value = value;
      input.dispatchEvent(new Event("change"));
    };
    change('select[aria-label="Colormap"]', "viridis");
    change('select[aria-label="Scale"]', "global");
    change('select[aria-label="Sort tiles"]', "mean");
    change('input[aria-label="Show top k"]', "7");
    root.querySelector<HTMLInputElement>(".fm-checkbox")!.click();
    expect(calls).toEqual([
      ["colormap", "viridis"],
      ["scale", "global"],
      ["sort", "mean"],
      ["topK", 7],
      ["symmetric", true],
    ]);
  });

  it("renders the header's name, shape, downsample badge and health as text", () => {
    const root = document.createElement("div");
    containers.push(root);
    const header = createHeader(root);
    header.update(meta("<b>x</b>", { dead: 3 }), 2);
    expect(root.querySelector("b")).toBeNull();
    expect(root.textContent).toContain("<b>x</b>");
    expect(root.textContent).toContain("64 × 8 × 8");
    expect(root.textContent).toContain("1/2 resolution");
    expect(root.textContent).toContain("3 of 64 channels dead");
  });
});
