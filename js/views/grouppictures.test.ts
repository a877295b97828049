import { afterEach, describe, expect, it } from "vitest";
import { type DatasetPicture, type LayerScan, RequestDropped, RequestError, type ScanInfo } from "../protocol";
import { GROUP_THUMB_PX, pictureIndices } from "./grouppictures";
import { createScanBar, type ScanBarState } from "./scanbar";

const INFO: ScanInfo = { images: 200, k: 3, complete: true, labels: ["cat", "dog"], layers: ["conv2"], crops: true };

function picture(index: number, label: string): DatasetPicture {
  return { index, label, picture: { height: 2, width: 3, pixels: new Uint8Array(18).fill(index) } };
}

function layerScan(pair: string[], examples: Record<string, number[]> = { cat: [3, 9], dog: [4] }): LayerScan {
  const none = new Float32Array(2);
  return {
    images: 200,
    dead: 0,
    label: null,
    pair,
    counts: pair.length === 2 ? { cat: 120, dog: 1 } : {},
    examples: pair.length === 2 ? examples : {},
    mean: none,
    max: none,
    active: none,
    selectivity: null,
    effect: pair.length === 2 ? new Float32Array([0.5, -1]) : null,
  };
}

/** A data source whose answers the test gives, one deferred promise per call. */
function fakeSource() {
  const calls: { kind: string; args: unknown[]; resolve(v: unknown): void; reject(e: unknown): void }[] = [];
  const pending = (kind: string, args: unknown[]) =>
    new Promise<never>((resolve, reject) => calls.push({ kind, args, resolve: resolve as never, reject }));
  return {
    calls,
    source: {
      live: true,
      pictures: (indices: readonly number[]) => pending("pictures", [[...indices]]),
      useExample: (index: number) => pending("use_example", [index]),
    },
  };
}

const boxes: HTMLElement[] = [];
afterEach(() => {
  for (const b of boxes.splice(0)) b.remove();
});

function mount(info: ScanInfo = INFO) {
  const box = document.createElement("div");
  box.className = "fmwidget";
  document.body.append(box);
  boxes.push(box);
  const { calls, source } = fakeSource();
  let revision = 1;
  const bar = createScanBar(box, { onLabel: () => {}, onPair: () => {} }, { source, revision: () => revision });
  const state = (pair: string[], scan: LayerScan | null = layerScan(pair)): ScanBarState => ({
    info,
    label: null,
    pair,
    layer: "conv2",
    scan,
  });
  const rows = () => box.querySelector<HTMLElement>('[aria-label="Dataset group examples"]')!;
  const thumbs = () => [...box.querySelectorAll<HTMLCanvasElement>('canvas[aria-label^="Dataset image #"]')];
  const flush = () => new Promise((r) => setTimeout(r, 0));
  return { bar, calls, state, rows, thumbs, flush, bump: () => revision++ };
}

describe("pictureIndices", () => {
  it("lists each label's examples in pair order, at most 8 each", () => {
    expect(pictureIndices(["a", "b"], { a: [3, 9], b: [1] })).toEqual([3, 9, 1]);
    expect(pictureIndices(["b", "a"], { a: [3], b: [] })).toEqual([3]);
    const many = Array.from({ length: 12 }, (_, i) => i);
    expect(pictureIndices(["a", "b"], { a: many, b: many })).toHaveLength(16);
  });
});

describe("the dataset bar's group rows", () => {
  it("asks for nothing and stays hidden without a pair", () => {
    const { bar, calls, state, rows } = mount();
    bar.update(state([]));
    expect(rows().hidden).toBe(true);
    // A pair picked but the layer's reply not in yet: still nothing to ask.
    bar.update(state(["cat", "dog"], null));
    expect(rows().hidden).toBe(true);
    expect(calls).toEqual([]);
  });

  it("shows a row per group with its count, loading placeholders, then pixelated thumbnails", async () => {
    const { bar, calls, state, rows, thumbs, flush } = mount();
    bar.update(state(["cat", "dog"]));
    const el = rows();
    expect(el.hidden).toBe(false);
    expect(el.dataset.state).toBe("loading");
    expect(el.textContent).toContain("Loading the pictures of 3 dataset images");
    expect(el.querySelectorAll(".fm-scan-thumb-placeholder")).toHaveLength(3);
    expect(calls.map((c) => [c.kind, c.args])).toEqual([["pictures", [[3, 9, 4]]]]);
    const labels = [...el.querySelectorAll(".fm-scan-group-row")].map((r) => [
      r.querySelector(".fm-scan-group-label")?.textContent,
      r.querySelector(".fm-groups-counts")?.textContent,
    ]);
    expect(labels).toEqual([
      ["cat", "120 images"],
      ["dog", "1 image"],
    ]);

    calls[0].resolve([picture(3, "cat"), picture(9, "cat"), picture(4, "dog")]);
    await flush();
    expect(el.dataset.state).toBe("ready");
    expect(el.querySelector(".fm-scan-groups-message")?.hasAttribute("hidden")).toBe(true);
    const canvases = thumbs();
    expect(canvases.map((c) => [c.getAttribute("aria-label"), c.title])).toEqual([
      ["Dataset image #3", "#3 · cat"],
      ["Dataset image #9", "#9 · cat"],
      ["Dataset image #4", "#4 · dog"],
    ]);
    expect(canvases[0].style.width).toBe(`${GROUP_THUMB_PX}px`);
    expect(canvases[0].style.imageRendering).toBe("pixelated");
    expect(canvases[0].width % 3).toBe(0); // upscaled by a whole factor
    const row = el.querySelectorAll(".fm-scan-group-row");
    expect(row[0].querySelectorAll("canvas")).toHaveLength(2);
    expect(row[1].querySelectorAll("canvas")).toHaveLength(1);

    // The same pair again (a new layer reply) asks nothing more.
    bar.update(state(["cat", "dog"]));
    expect(calls).toHaveLength(1);
    expect(thumbs()).toHaveLength(3);
  });

  it("makes a clicked picture the input, busy until the new revision comes", async () => {
    const { bar, calls, state, rows, thumbs, flush, bump } = mount();
    bar.update(state(["cat", "dog"]));
    calls[0].resolve([picture(3, "cat"), picture(9, "cat"), picture(4, "dog")]);
    await flush();
    thumbs()[1].click();
    expect(calls[1]).toMatchObject({ kind: "use_example", args: [9] });
    expect(rows().dataset.state).toBe("busy");
    expect(rows().textContent).toContain("Making dataset image #9 the input");
    thumbs()[0].click(); // ignored while busy
    expect(calls).toHaveLength(2);
    bump();
    calls[1].resolve({ index: 9 });
    await flush();
    expect(rows().dataset.state).toBe("ready");
    expect(rows().textContent).not.toContain("Making");
  });

  it("says why a click failed and stays usable", async () => {
    const { bar, calls, state, rows, thumbs, flush } = mount();
    bar.update(state(["cat", "dog"]));
    calls[0].resolve([picture(3, "cat"), picture(9, "cat"), picture(4, "dog")]);
    await flush();
    thumbs()[2].click();
    calls[1].reject(new RequestError("use_example", "the kernel is gone"));
    await flush();
    expect(rows().dataset.state).toBe("ready");
    const message = rows().querySelector(".fm-scan-groups-message")!;
    expect(message.textContent).toBe("Could not show image #4: the kernel is gone");
    expect(message.classList.contains("fm-error-text")).toBe(true);
    thumbs()[0].click();
    expect(calls[2]).toMatchObject({ kind: "use_example", args: [3] });
  });

  it("shows the error of a failed request, with the rows' labels and counts, and does not re-ask", async () => {
    const { bar, calls, state, rows, thumbs, flush } = mount();
    bar.update(state(["cat", "dog"]));
    calls[0].reject(new RequestError("pictures", "pictures of dataset images come from the dataset"));
    await flush();
    const el = rows();
    expect(el.dataset.state).toBe("error");
    expect(el.textContent).toContain("Could not load the pictures of the groups' images: pictures of dataset images");
    expect(el.querySelector(".fm-error-text")).not.toBeNull();
    expect(el.textContent).toContain("120 images");
    expect(thumbs()).toHaveLength(0);
    expect(el.querySelectorAll(".fm-scan-thumb-placeholder")).toHaveLength(0);
    bar.update(state(["cat", "dog"]));
    expect(calls).toHaveLength(1);
  });

  it("keeps only the latest pair's reply, and re-asks after a stale drop", async () => {
    const { bar, calls, state, thumbs, flush } = mount();
    bar.update(state(["cat", "dog"]));
    bar.update(state(["dog", "cat"]));
    expect(calls.map((c) => c.args)).toEqual([[[3, 9, 4]], [[4, 3, 9]]]);
    calls[0].resolve([picture(3, "cat"), picture(9, "cat"), picture(4, "dog")]);
    await flush();
    expect(thumbs()).toHaveLength(0);
    calls[1].reject(new RequestDropped("stale"));
    await flush();
    expect(calls.map((c) => c.args)).toEqual([[[3, 9, 4]], [[4, 3, 9]], [[4, 3, 9]]]);
    calls[2].resolve([picture(4, "dog"), picture(3, "cat"), picture(9, "cat")]);
    await flush();
    expect(thumbs().map((c) => c.title)).toEqual(["#4 · dog", "#3 · cat", "#9 · cat"]);
  });

  it("hides with the pair and asks nothing without a dataset", async () => {
    const { bar, calls, state, rows } = mount({ ...INFO, crops: false });
    bar.update(state(["cat", "dog"]));
    expect(calls).toEqual([]);
    expect(rows().dataset.state).toBe("ready");
    expect(rows().textContent).toContain("No pictures: pass dataset= to the widget");
    bar.update(state([]));
    expect(rows().hidden).toBe(true);
  });
});
