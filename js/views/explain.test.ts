import { afterEach, describe, expect, it } from "vitest";
import {
  type ChannelData,
  decodeExplain,
  type Explanation,
  type InputPicture,
  type Reply,
  RequestError,
} from "../protocol";
import { themeColors } from "../theme";
import { createDetail, exactValue } from "./detail";
import { beforeAfter, createExplain, HOVER_MS, num, renderExplanation, sumLine, topChannels } from "./explain";

const f32 = (...v: number[]) => new Float32Array(v);
const arr = (name: string, shape: number[], data: Float32Array) => ({ name, dtype: "float32" as const, shape, data });

/** An `explain` reply for a conv with `cin` input channels of 1 × 2 kernels. */
function convReply(cin: number, extra: Record<string, unknown> = {}): Reply {
  const patch = new Float32Array(cin * 2).map((_, i) => (i % 3) - 1);
  const kernel = new Float32Array(cin * 2).map((_, i) => 0.5 * ((i % 2) + 1));
  const sums = new Float32Array(cin).map((_, c) => patch[2 * c] * kernel[2 * c] + patch[2 * c + 1] * kernel[2 * c + 1]);
  const total = sums.reduce((a, b) => a + b, 0) + 0.25;
  return {
    id: 1,
    kind: "explain",
    meta: {
      layer: "features.0.0",
      sample: 0,
      channel: 3,
      row: 4,
      col: 5,
      type: "Conv2d",
      value: Math.fround(total),
      op: "conv",
      text: "Conv2d 1×2: the kernel times the input channels under it, element by element, summed plus the bias",
      before: null,
      after: null,
      window_shape: null,
      conv: { layer: "features.0.0", bias: 0.25, total, inputs: [0, cin], shape: [cin, 1, 2], rgb: cin === 3 },
      activation: null,
      matches: true,
      box: [2, 3, 9, 10],
      input_shape: [32, 32],
      note: "",
      ...extra,
    },
    arrays: {
      patch: arr("patch", [cin, 1, 2], patch),
      kernel: arr("kernel", [cin, 1, 2], kernel),
      per_channel: arr("per_channel", [cin], sums),
    },
  };
}

const ARGS = { layer: "features.0.0", sample: 0, channel: 3, row: 4, col: 5 };

describe("decodeExplain", () => {
  it("reads a conv breakdown: patch, kernel and per-channel sums as float32 views, the box and the sum", () => {
    const reply = convReply(6);
    const e = decodeExplain(reply, ARGS);
    expect(e).toMatchObject({ layer: "features.0.0", channel: 3, row: 4, col: 5, op: "conv", matches: true });
    expect(e.box).toEqual([2, 3, 9, 10]);
    expect(e.inputShape).toEqual([32, 32]);
    expect(e.conv).toMatchObject({ cin: 6, kh: 1, kw: 2, bias: 0.25, inputs: [0, 6], rgb: false });
    expect(e.conv?.patch).toBe(reply.arrays.patch.data);
    expect(e.conv?.perChannel.length).toBe(6);
  });

  it("reads a layer's line, before → after and a pooling window; null for what was not finite", () => {
    const reply: Reply = {
      id: 2,
      kind: "explain",
      meta: {
        ...convReply(1).meta,
        op: "layer",
        type: "MaxPool2d",
        text: "MaxPool2d 3×3 stride 2: the largest of 4 inputs",
        conv: null,
        value: null,
        after: 2,
        window_shape: [2, 2],
        box: null,
      },
      arrays: { window: arr("window", [2, 2], f32(1, 2, -1, 0)) },
    };
    const e = decodeExplain(reply, ARGS);
    expect(e).toMatchObject({ op: "layer", value: null, after: 2, conv: null, box: null, inputShape: null });
    expect(e.window).toMatchObject({ rows: 2, cols: 2 });
    expect(Array.from(e.window?.data ?? [])).toEqual([1, 2, -1, 0]);
  });

  it("refuses a conv reply whose arrays do not match its shape, and an unknown op", () => {
    const reply = convReply(2);
    reply.arrays.per_channel = arr("per_channel", [3], f32(1, 2, 3));
    expect(() => decodeExplain(reply, ARGS)).toThrow(/array "per_channel" is float32 \[3\]; expected 2 values/);
    expect(() => decodeExplain({ ...convReply(2), meta: { ...convReply(2).meta, op: "guess" } }, ARGS)).toThrow(
      /meta.op is "guess"/,
    );
    expect(() => decodeExplain({ ...convReply(2), meta: { ...convReply(2).meta, conv: null } }, ARGS)).toThrow(
      /needs meta.conv/,
    );
  });
});

describe("helpers", () => {
  it("prints numbers to 5 digits and the kernel's null as not finite", () => {
    expect(num(0.123456)).toBe("0.12346");
    expect(num(null)).toBe("not finite");
    expect(num(-0)).toBe("0");
  });

  it("picks the input channels with the largest |sum|", () => {
    expect(topChannels(f32(0.1, -3, 2, 0, 0.5, 1), 2)).toEqual([1, 2]);
    expect(topChannels(f32(1, 2), 4)).toEqual([0, 1]);
  });

  it("writes the Σ line ending in the captured value when the kernel found them equal", () => {
    const e = decodeExplain(convReply(2), ARGS);
    const products = e.conv!.perChannel[0] + e.conv!.perChannel[1];
    expect(sumLine(e, exactValue)).toBe(`Σ 4 products + bias = ${num(products)} + 0.25 = ${exactValue(e.value!)}`);
    const mismatch = { ...e, matches: false };
    expect(sumLine(mismatch, exactValue).endsWith(`= ${num(e.conv!.total)}`)).toBe(true);
    expect(beforeAfter(-0.5, 0, 0, exactValue, true)).toBe("x = -0.5 → 0");
    expect(beforeAfter(null, 2, null, exactValue)).toBe("→ 2");
  });
});

const boxes: HTMLElement[] = [];
afterEach(() => {
  for (const b of boxes.splice(0)) b.remove();
});

function host(): HTMLElement {
  const box = document.createElement("div");
  box.className = "fmwidget";
  document.body.append(box);
  boxes.push(box);
  return box;
}

describe("renderExplanation", () => {
  it("draws patch × kernel = products for the 4 largest input channels, a bar of all sums and the Σ line", () => {
    const body = host();
    const e = decodeExplain(convReply(6), ARGS);
    renderExplanation(body, e, themeColors(body), exactValue);
    expect(body.querySelectorAll(".fm-explain-channels .fm-explain-row")).toHaveLength(4);
    expect(body.querySelectorAll("canvas.fm-explain-grid")).toHaveLength(12);
    expect(body.querySelector("canvas[aria-label='Sum of each of the 6 input channels']")).not.toBeNull();
    const sum = body.querySelector("[aria-label='Sum']")?.textContent ?? "";
    expect(sum).toBe(sumLine(e, exactValue));
    expect(sum.endsWith(`= ${exactValue(e.value!)}`)).toBe(true);
    expect(body.textContent).toContain("channel 3 at (row 4, col 5)");
  });

  it("draws a first layer's patch and kernel as colour pictures, with the sum per colour", () => {
    const body = host();
    renderExplanation(body, decodeExplain(convReply(3), ARGS), themeColors(body), exactValue);
    expect(body.querySelector("canvas[aria-label='Input patch (RGB)']")).not.toBeNull();
    expect(body.querySelector("canvas[aria-label='Kernel (RGB)']")).not.toBeNull();
    expect(body.textContent).toContain("Σ per colour channel: R ");
    expect(body.querySelectorAll(".fm-explain-channels")).toHaveLength(0);
  });

  it("says what another layer does and its before → after; names stay text", () => {
    const body = host();
    const e: Explanation = {
      ...decodeExplain(convReply(1), ARGS),
      layer: "<img src=x onerror=alert(1)>",
      op: "layer",
      conv: null,
      text: "BatchNorm2d: (x − 0.12) / √(0.98 + 1e-05) · 1.03 − 0.2",
      before: 0.5,
      after: 0.1224,
      value: Math.fround(0.1224),
      matches: true,
    };
    renderExplanation(body, e, themeColors(body), exactValue);
    expect(body.querySelector("img")).toBeNull();
    expect(body.textContent).toContain("<img src=x onerror=alert(1)>, channel 3");
    expect(body.querySelector(".fm-explain-text")?.textContent).toBe(e.text);
    expect(body.querySelector("[aria-label='Before and after']")?.textContent).toBe(
      `x = 0.5 → ${exactValue(Math.fround(0.1224))}`,
    );
  });
});

/** A source whose `explain` answers are given by the test, one deferred promise per call. */
function fakeExplainSource(live = true) {
  const calls: { args: typeof ARGS; resolve(e: Explanation): void; reject(e: unknown): void }[] = [];
  return {
    calls,
    source: {
      live,
      explain: (args: typeof ARGS) =>
        new Promise<Explanation>((resolve, reject) => calls.push({ args, resolve, reject })),
    },
  };
}

const wait = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("createExplain", () => {
  it("throttles hovers (latest wins), keeps the last explanation and pins on click", async () => {
    const { calls, source } = fakeExplainSource();
    const shown: (Explanation | null)[] = [];
    const view = createExplain(host(), { source, onShow: (e) => shown.push(e) }, exactValue);
    view.hover({ ...ARGS, row: 0, col: 0 });
    view.hover({ ...ARGS, row: 0, col: 1 });
    view.hover({ ...ARGS, row: 0, col: 2 });
    expect(calls).toHaveLength(1);
    await wait(HOVER_MS + 30);
    expect(calls.map((c) => c.args.col)).toEqual([0, 2]);
    calls[0].resolve(decodeExplain(convReply(2, { col: 0 }), ARGS));
    await wait(0);
    expect(view.shown).toBeNull(); // an answer to an older hover is not shown
    calls[1].resolve(decodeExplain(convReply(2, { col: 2 }), ARGS));
    await wait(0);
    expect(view.element.dataset.state).toBe("ready");
    expect(view.shown?.col).toBe(2);
    expect(shown.at(-1)?.col).toBe(2);
    view.pin({ ...ARGS, row: 1, col: 1 });
    expect(view.element.classList.contains("fm-pinned")).toBe(true);
    await wait(HOVER_MS + 30);
    view.hover({ ...ARGS, row: 3, col: 3 });
    await wait(HOVER_MS + 30);
    expect(calls.map((c) => c.args.col)).toEqual([0, 2, 1]); // pinned: hovering asks nothing
    view.destroy();
  });

  it("shows an error reply as a short note", async () => {
    const { calls, source } = fakeExplainSource();
    const view = createExplain(host(), { source, onShow: () => {} }, exactValue);
    view.hover(ARGS);
    calls[0].reject(new RequestError("explain", "position (row 9, col 0) is outside layer 'c''s 9×9 maps"));
    await wait(0);
    expect(view.element.dataset.state).toBe("error");
    const message = view.element.querySelector(".fm-explain-message");
    expect(message?.classList.contains("fm-error-text")).toBe(true);
    expect(message?.textContent).toContain("is outside layer 'c''s 9×9 maps");
    view.destroy();
  });

  it("in a saved file says it needs the live kernel and asks nothing", () => {
    const { calls, source } = fakeExplainSource(false);
    const view = createExplain(host(), { source, onShow: () => {} }, exactValue);
    view.hover(ARGS);
    view.pin(ARGS);
    expect(calls).toHaveLength(0);
    expect(view.element.dataset.state).toBe("offline");
    expect(view.element.textContent).toContain("needs the model, in the notebook's live kernel");
    view.destroy();
  });
});

describe("the channel view's hover", () => {
  it("explains the pointed pixel and boxes its receptive field on the input", async () => {
    const { calls, source: explainSource } = fakeExplainSource();
    const channel: ChannelData = {
      layer: "features.0.0",
      channel: 3,
      height: 8,
      width: 8,
      values: new Float32Array(64).map((_, i) => i / 10),
      filter: null,
      quantized: null,
    };
    const picture: InputPicture = { height: 32, width: 32, pixels: new Uint8Array(32 * 32 * 3).fill(128) };
    const source = {
      ...explainSource,
      channel: () => Promise.resolve(channel),
      input: () => Promise.resolve(picture),
      examples: () => Promise.reject(new Error("no scan")),
      useExample: () => Promise.reject(new Error("no scan")),
    };
    const root = host();
    const meta = { name: "features.0.0", shape: [1, 8, 8, 8] } as never;
    const detail = createDetail(root, {
      source,
      scan: () => null,
      revision: () => 1,
      sample: () => 0,
      layer: () => meta,
      colormap: () => "gray",
      scope: () => "channel",
      symmetric: () => false,
      globalRange: () => [0, 1],
      flags: () => 0,
      onNavigate: () => {},
    });
    detail.show(3);
    await wait(0);
    const map = root.querySelector("canvas[aria-label='Channel map']") as HTMLCanvasElement;
    const rect = map.getBoundingClientRect();
    map.dispatchEvent(
      new PointerEvent("pointermove", {
        clientX: rect.left + (5.5 / 8) * rect.width,
        clientY: rect.top + (4.5 / 8) * rect.height,
      }),
    );
    expect(calls.map((c) => c.args)).toEqual([ARGS]);
    calls[0].resolve(decodeExplain(convReply(2), ARGS));
    await wait(0);
    const box = root.querySelector("[aria-label='Receptive field']") as HTMLElement;
    expect(box.hidden).toBe(false);
    expect(box.dataset.box).toBe("2,3,9,10");
    const overlay = root.querySelector("canvas[aria-label='Map over the input image']") as HTMLCanvasElement;
    expect(Number.parseFloat(box.style.width)).toBeCloseTo((7 * overlay.clientWidth) / 32, 1);
    const panel = root.querySelector("[aria-label='How is this computed?']") as HTMLElement;
    expect(panel.querySelector("[aria-label='Sum']")?.textContent).toContain("Σ 4 products + bias");
    // The pointer leaving keeps the explanation and its box.
    map.dispatchEvent(new PointerEvent("pointerleave"));
    expect(box.hidden).toBe(false);
    expect(panel.dataset.state).toBe("ready");
    detail.destroy();
  });
});
