import { afterEach, describe, expect, it } from "vitest";
import type { LayerMeta, LayerScan } from "../protocol";
import { layerMeta } from "../testing/fixtures";
import { type ControlHandlers, type ControlState, createControls, tileOrder } from "./controls";

function meta(name: string, extra: Partial<LayerMeta> = {}): LayerMeta {
  return layerMeta(name, { shape: [2, 64, 8, 8], filter: true, ...extra });
}

/** Stats rows [min, max, mean, zeros, nan, inf] for channels with the given means, maxes and zero fractions. */
function stats(rows: [number, number, number][]): Float32Array {
  const s = new Float32Array(rows.length * 6);
  rows.forEach(([mean, max, zeros], c) => {
    s.set([0, max, mean, zeros, 0, 0], 6 * c);
  });
  return s;
}

describe("tileOrder with a dataset scan", () => {
  const stats = new Float32Array(4 * 6);
  const scan = (extra: Partial<LayerScan> = {}): LayerScan => ({
    images: 100,
    dead: 1,
    label: null,
    pair: [],
    counts: {},
    examples: {},
    mean: Float32Array.from([0.5, 2, 0, 1]),
    max: Float32Array.from([3, 1, 0, 2]),
    active: Float32Array.from([0.2, 0.9, 0, 0.5]),
    selectivity: null,
    effect: null,
    ...extra,
  });

  it("orders by the dataset mean, max and active fraction, largest first", () => {
    expect(Array.from(tileOrder("dataset_mean", stats, 4, 0, null, null, scan())!)).toEqual([1, 3, 0, 2]);
    expect(Array.from(tileOrder("dataset_max", stats, 4, 0, null, null, scan())!)).toEqual([0, 3, 1, 2]);
    expect(Array.from(tileOrder("dataset_active", stats, 4, 2, null, null, scan())!)).toEqual([1, 3]);
  });

  it("orders by selectivity descending and by the dataset effect's |d|", () => {
    const s = scan({
      selectivity: Float32Array.from([-0.9, 0.3, 0, 0.8]),
      effect: Float32Array.from([0.4, -2.5, 0, 1.1]),
    });
    expect(Array.from(tileOrder("selectivity", stats, 4, 0, null, null, s)!)).toEqual([3, 1, 2, 0]);
    expect(Array.from(tileOrder("dataset_effect", stats, 4, 0, null, null, s)!)).toEqual([1, 3, 0, 2]);
  });

  it("keeps channel order when the layer has no scan arrays", () => {
    expect(Array.from(tileOrder("selectivity", stats, 4, 0, null, null, scan())!)).toEqual([0, 1, 2, 3]);
    expect(Array.from(tileOrder("dataset_mean", stats, 4, 0, null, null, null)!)).toEqual([0, 1, 2, 3]);
  });
});

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

  it("sorts by group effect size |d|, either sign", () => {
    const d = new Float32Array([0.5, -2, Number.NaN, 1.5]);
    expect(Array.from(tileOrder("effect", s, 4, 0, null, d)!)).toEqual([1, 3, 0, 2]);
  });

  it("cuts index order to k", () => {
    expect(Array.from(tileOrder("index", s, 4, 3, null)!)).toEqual([0, 1, 2]);
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
      onPreview: record("preview"),
      onColormap: record("colormap"),
      onScale: record("scale"),
      onSymmetric: record("symmetric"),
      onSample: record("sample"),
      onSort: record("sort"),
      onTopK: record("topK"),
      onGradcam: record("gradcam"),
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
    gradcam: false,
    groups: [],
    scanSorts: { dataset: false, selectivity: false, effect: false },
    ...extra,
  });

  const nextFrame = (): Promise<void> => new Promise((r) => requestAnimationFrame(() => r()));

  it("previews the layer under the thumb instantly and sends the layer once per frame, with the latest position", async () => {
    const { calls, controls, root } = mount();
    controls.update(state());
    const slider = root.querySelector<HTMLInputElement>('input[aria-label="Layer"]')!;
    const position = root.querySelector(".fm-layer-pos")!;
    expect(position.textContent).toBe("1 / 3");
    slider.value = "1";
    slider.dispatchEvent(new Event("input"));
    expect(position.textContent).toBe("2 / 3");
    expect(calls).toEqual([["preview", "relu"]]);
    slider.value = "2";
    slider.dispatchEvent(new Event("input"));
    expect(calls).toEqual([
      ["preview", "relu"],
      ["preview", '<img src=x onerror="alert(1)">'],
    ]);
    await nextFrame();
    expect(calls.at(-1)).toEqual(["layer", '<img src=x onerror="alert(1)">']);
    expect(calls.filter(([name]) => name === "layer")).toHaveLength(1);
    // Screen readers hear the name with the position; the names are text, not markup.
    expect(slider.getAttribute("aria-valuetext")).toBe('<img src=x onerror="alert(1)"> (Conv2d, 64 × 8 × 8)');
    expect(root.querySelector("img")).toBeNull();
  });

  it("names the layer only in the header: the slider row shows the position alone", () => {
    const { controls, root } = mount();
    controls.update(state({ layer: "relu" }));
    const row = root.querySelector<HTMLElement>(".fm-layer-row")!;
    expect(row.textContent).toBe("2 / 3");
    expect(row.textContent).not.toContain("ReLU");
  });

  it("shows the sample picker with predictions only for a batch", () => {
    const { controls, root } = mount();
    controls.update(state());
    const picker = root.querySelector<HTMLSelectElement>('select[aria-label="Sample"]')!;
    expect(picker.closest("label")!.hidden).toBe(true);
    controls.update(
      state({ numSamples: 2, sample: 1, predictions: [[{ index: 285, label: "Egyptian cat", prob: 0.71 }], []] }),
    );
    expect(picker.closest("label")!.hidden).toBe(false);
    expect(Array.from(picker.options).map((o) => o.textContent)).toEqual(["#0 · Egyptian cat 71%", "#1"]);
    expect(picker.value).toBe("1");
  });

  it("labels samples with their group and classes without names by index", () => {
    const { controls, root } = mount();
    controls.update(
      state({
        numSamples: 2,
        groups: ["indoor", "outdoor"],
        predictions: [[{ index: 17, label: null, prob: 0.5 }], []],
      }),
    );
    const picker = root.querySelector<HTMLSelectElement>('select[aria-label="Sample"]')!;
    expect(Array.from(picker.options).map((o) => o.textContent)).toEqual([
      "#0 · class 17 50% · [indoor]",
      "#1 · [outdoor]",
    ]);
  });

  it("offers the group-effect sort only with groups, and reports the Grad-CAM toggle", () => {
    const { calls, controls, root } = mount();
    controls.update(state());
    const effect = root.querySelector<HTMLOptionElement>('select[aria-label="Sort tiles"] option[value="effect"]')!;
    expect(effect.hidden).toBe(true);
    controls.update(state({ groups: ["a", "b"] }));
    expect(effect.hidden).toBe(false);
    expect(effect.textContent).toBe("Group effect (|d|)");
    const toggle = root.querySelector<HTMLInputElement>('input[aria-label="Grad-CAM"]')!;
    toggle.click();
    expect(calls).toEqual([["gradcam", true]]);
    controls.update(state({ gradcam: false }));
    expect(toggle.checked).toBe(false);
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
});

describe("the dataset sorts in the picker", () => {
  it("are listed only when the scan offers them", () => {
    const root = document.createElement("div");
    document.body.append(root);
    const noop = () => {};
    const controls = createControls(root, {
      onLayer: noop,
      onPreview: noop,
      onColormap: noop,
      onScale: noop,
      onSymmetric: noop,
      onSample: noop,
      onSort: noop,
      onTopK: noop,
      onGradcam: noop,
    });
    const base: ControlState = {
      layers: [layerMeta("conv1")],
      layer: "conv1",
      colormap: "gray",
      scale: "channel",
      symmetric: false,
      sample: 0,
      numSamples: 1,
      predictions: [],
      sort: "index",
      topK: 0,
      gradcam: false,
      groups: [],
      scanSorts: { dataset: false, selectivity: false, effect: false },
    };
    const shown = (): string[] =>
      [...root.querySelectorAll<HTMLOptionElement>('select[aria-label="Sort tiles"] option')]
        .filter((o) => !o.hidden)
        .map((o) => o.textContent ?? "");
    controls.update(base);
    expect(shown()).not.toContain("Dataset mean");
    controls.update({ ...base, scanSorts: { dataset: true, selectivity: false, effect: false } });
    expect(shown()).toEqual(expect.arrayContaining(["Dataset mean", "Dataset max", "Dataset active"]));
    expect(shown()).not.toContain("Selectivity");
    controls.update({ ...base, scanSorts: { dataset: true, selectivity: true, effect: true } });
    expect(shown()).toEqual(expect.arrayContaining(["Selectivity", "Dataset effect (|d|)"]));
    controls.destroy();
    root.remove();
  });
});
