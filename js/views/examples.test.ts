import { afterEach, describe, expect, it } from "vitest";
import { type DatasetExample, type ExamplesResult, RequestDropped, RequestError, type ScanInfo } from "../protocol";
import { createExamples, examplesCaption, THUMB_PX } from "./examples";

const SCAN: ScanInfo = { images: 1000, k: 3, complete: true, labels: ["0", "1"], layers: ["conv2"], crops: true };

function example(index: number, value: number, withCrop = true): DatasetExample {
  return {
    index,
    value,
    row: 1,
    col: 2,
    label: String(index % 2),
    box: withCrop ? [0, 0, 2, 3] : null,
    peak: withCrop ? [1, 1] : null,
    crop: withCrop ? { height: 2, width: 3, pixels: new Uint8Array(18).fill(index) } : null,
  };
}

function result(channel: number, crops = true): ExamplesResult {
  return {
    layer: "conv2",
    channel,
    crops,
    note: crops ? "" : "no crops: pass dataset= to the widget",
    examples: [example(40 + channel, 9.1234, crops), example(7, 7.5, crops), example(3, 0.25, crops)],
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
      examples: (layer: string, channel: number) => pending("examples", [layer, channel]),
      useExample: (index: number) => pending("use_example", [index]),
    },
  };
}

const boxes: HTMLElement[] = [];
afterEach(() => {
  for (const b of boxes.splice(0)) b.remove();
});

function mount(scan: ScanInfo | null = SCAN, live = true) {
  const box = document.createElement("div");
  document.body.append(box);
  boxes.push(box);
  const { calls, source: kernel } = fakeSource();
  const source = { ...kernel, live };
  let revision = 1;
  const view = createExamples(box, { source, scan: () => scan, revision: () => revision });
  const flush = () => new Promise((r) => setTimeout(r, 0));
  return { view, calls, flush, bump: () => revision++, el: view.element };
}

describe("examplesCaption", () => {
  it("says how many of how many images, and what the ring is", () => {
    expect(examplesCaption(9, { images: 1000, complete: true }, true)).toBe(
      "top 9 of 1,000 images; ring = where the channel peaks",
    );
    expect(examplesCaption(9, { images: 50, complete: false }, false)).toBe("top 9 of 50 images (scan interrupted)");
  });
});

describe("the top dataset examples section", () => {
  it("shows a loading state, then one pixelated crop per example, best first, with value, index and label", async () => {
    const { view, calls, flush, el } = mount();
    view.show("conv2", 1);
    expect(el.hidden).toBe(false);
    expect(el.dataset.state).toBe("loading");
    expect(el.textContent).toContain("Loading the top examples of channel 1");
    expect(calls.map((c) => c.args)).toEqual([["conv2", 1]]);
    calls[0].resolve(result(1));
    await flush();
    expect(el.dataset.state).toBe("ready");
    const crops = [...el.querySelectorAll<HTMLCanvasElement>("canvas.fm-example-crop")];
    // Each 3×2 crop upscaled by a whole factor (aspect kept), so the peak's ring can be thin.
    expect(crops.map((c) => [c.width, c.height])).toEqual([
      [168, 112],
      [168, 112],
      [168, 112],
    ]);
    expect(crops[0].style.width).toBe(`${THUMB_PX}px`);
    expect(getComputedStyle(crops[0]).imageRendering).toBe("pixelated");
    // The crop's pixels are the example's bytes.
    expect(Array.from(crops[0].getContext("2d")!.getImageData(0, 0, 1, 1).data)).toEqual([41, 41, 41, 255]);
    const values = [...el.querySelectorAll(".fm-example-value")].map((e) => e.textContent);
    expect(values).toEqual(["9.12", "7.5", "0.25"]);
    expect(el.querySelector(".fm-example-meta")!.textContent).toBe("#41 · 1");
    expect(el.querySelector(".fm-caption")!.textContent).toBe("top 3 of 1,000 images; ring = where the channel peaks");
  });

  it("makes a clicked example the input, busy until the new revision, and shows an error reply as text", async () => {
    const { view, calls, flush, bump, el } = mount();
    view.show("conv2", 0);
    calls[0].resolve(result(0));
    await flush();
    el.querySelector<HTMLButtonElement>("button.fm-example-button")!.click();
    expect(calls[1]).toMatchObject({ kind: "use_example", args: [40] });
    expect(el.dataset.state).toBe("busy");
    expect(el.textContent).toContain("Making dataset image #40 the input");
    // A second click while busy sends nothing.
    el.querySelectorAll<HTMLButtonElement>("button.fm-example-button")[1].click();
    expect(calls).toHaveLength(2);
    // The kernel's new capture arrives (the panel shows the channel again), then its reply reads as stale.
    bump();
    view.show("conv2", 0);
    calls[1].reject(new RequestDropped("stale"));
    await flush();
    expect(el.dataset.state).toBe("ready");
    expect(el.querySelector(".fm-examples-message")!.textContent).toBe("");

    el.querySelectorAll<HTMLButtonElement>("button.fm-example-button")[2].click();
    calls[2].reject(new RequestError("use_example", "image 3 is out of range: the dataset has 2"));
    await flush();
    expect(el.dataset.state).toBe("ready");
    const message = el.querySelector(".fm-examples-message")!;
    expect(message.textContent).toBe("Could not show image #3: image 3 is out of range: the dataset has 2");
    expect(message.classList.contains("fm-error-text")).toBe(true);
  });

  it("lists the examples as text with the kernel's note when there are no crops", async () => {
    const { view, calls, flush, el } = mount({ ...SCAN, crops: false });
    view.show("conv2", 2);
    calls[0].resolve(result(2, false));
    await flush();
    expect(el.querySelectorAll("canvas").length).toBe(0);
    expect(el.querySelectorAll("button").length).toBe(0);
    expect(el.querySelectorAll(".fm-example").length).toBe(3);
    expect(el.querySelector(".fm-examples-message")!.textContent).toBe("no crops: pass dataset= to the widget");
    expect(el.querySelector(".fm-caption")!.textContent).toBe("top 3 of 1,000 images");
  });

  it("shows an error state (not a blank box), and retries when shown again", async () => {
    const { view, calls, flush, el } = mount();
    view.show("conv2", 3);
    calls[0].reject(new RequestError("examples", "the scan has no channel 3"));
    await flush();
    expect(el.dataset.state).toBe("error");
    expect(el.textContent).toContain("Could not load the dataset examples of channel 3: the scan has no channel 3");
    view.show("conv2", 3);
    expect(calls).toHaveLength(2);
  });

  it("drops a stale channel's reply: the latest channel wins", async () => {
    const { view, calls, flush, el } = mount();
    view.show("conv2", 0);
    view.show("conv2", 1);
    calls[1].resolve(result(1));
    calls[0].resolve(result(0));
    await flush();
    expect(el.querySelector(".fm-example-meta")!.textContent).toBe("#41 · 1");
  });

  it("asks again when a new capture made the pending reply stale", async () => {
    const { view, calls, flush, el } = mount();
    view.show("conv2", 1);
    calls[0].reject(new RequestDropped("stale"));
    await flush();
    expect(calls).toHaveLength(2);
    calls[1].resolve(result(1));
    await flush();
    expect(el.dataset.state).toBe("ready");
  });

  it("hides for a layer the scan does not cover, and without a scan", () => {
    const { view, calls, el } = mount();
    view.show("conv1", 0);
    expect(el.hidden).toBe(true);
    expect(calls).toHaveLength(0);
    const none = mount(null);
    none.view.show("conv2", 0);
    expect(none.el.hidden).toBe(true);
  });

  it("in a saved file (no kernel) shows the crops but offers no click", async () => {
    const { view, calls, flush, el } = mount(SCAN, false);
    view.show("conv2", 1);
    calls[0].resolve(result(1));
    await flush();
    expect(el.querySelectorAll("canvas.fm-example-crop").length).toBe(3);
    expect(el.querySelectorAll("button.fm-example-button").length).toBe(0);
  });
});
