import { afterEach, describe, expect, it } from "vitest";
import { userEvent } from "vitest/browser";
import type { LayerMeta, Traits } from "./protocol";
import { layerMeta } from "./testing/fixtures";
import { exactValue } from "./views/detail";
import widget from "./widget";

const C = 4;
const H = 8;
const W = 8;

/** The synthetic activation of a layer: distinct per channel, row and column, so a readout can be checked. */
function activation(layerIndex: number, c: number, r: number, col: number): number {
  return Math.fround(layerIndex - 1.5 + c * 0.75 + r * 0.1 - col * 0.013);
}

function meta(name: string, type: string, extra: Partial<LayerMeta> = {}): LayerMeta {
  return layerMeta(name, { type, shape: [1, C, H, W], min: -2, max: 4, filter: type === "Conv2d", ...extra });
}

/** "big": BIG_C channels of 16×16 that the kernel pools 2× (8×8) unless asked for some channels. */
const BIG_C = 100;
const BIG = 16;

/** The synthetic Grad-CAM map (4×4) of a layer: conv1 peaks at the bottom-left, every other layer at the top-right. */
function heatmapOf(layer: string): Float32Array {
  const h = new Float32Array(16).fill(0.1);
  h[layer === "conv1" ? 3 * 4 + 0 : 0 * 4 + 3] = 3;
  return h;
}

const GRADCAM_WEIGHTS = [0.1, 0.4, -0.2, 0.3];
const SCAN_MEAN = [0.5, 2, 0, 1];
const SCAN_MAX = [3, 1, 0, 2];
const SCAN_ACTIVE = [0.2, 0.9, 0, 0.5];
const SCAN_SELECTIVITY = [-0.1, 0.3, 0, 0.8];
const SCAN_EFFECT = [0.4, -2.5, 0, 1.1];
const EFFECT = [0.2, -1.8, 0.9, 0.1];

type Handler = (...args: any[]) => void;

/**
 * A stand-in for anywidget's model: Backbone-style get/set/on/off with local change events, and a kernel
 * behind `send` that answers each request (asynchronously, as a comm does) with synthetic data. A layer
 * named "broken" gets an error reply.
 */
class FakeWidgetModel {
  attrs: Traits;
  handlers = new Map<string, Set<Handler>>();
  sent: Record<string, any>[] = [];
  saves = 0;
  /** The model is not a classifier: Grad-CAM requests get an error reply. */
  classifier = true;
  /** Requests wait in `held` until the test answers them (a kernel running a long cell). */
  hold = false;
  held: Record<string, any>[] = [];
  /** Channel flags per layer (bit 1 dead); zeros when absent. */
  flags: Record<string, number[]> = {};

  constructor(attrs: Traits) {
    this.attrs = attrs;
  }
  get<K extends keyof Traits>(key: K): Traits[K] {
    return this.attrs[key];
  }
  set<K extends keyof Traits>(key: K, value: Traits[K]): void {
    if (JSON.stringify(this.attrs[key]) === JSON.stringify(value)) return;
    this.attrs[key] = value;
    for (const h of this.handlers.get(`change:${key}`) ?? []) h();
    // As Backbone: one `change` after the `change:<key>` events of a set.
    for (const h of this.handlers.get("change") ?? []) h();
  }
  on(event: string, cb: Handler): void {
    if (!this.handlers.has(event)) this.handlers.set(event, new Set());
    this.handlers.get(event)!.add(cb);
  }
  off(event?: string | null, cb?: Handler | null): void {
    if (event && cb) this.handlers.get(event)?.delete(cb);
  }
  save_changes(): void {
    this.saves++;
  }
  listenerCount(): number {
    let n = 0;
    for (const set of this.handlers.values()) n += set.size;
    return n;
  }
  send(content: unknown): void {
    const req = content as Record<string, any>;
    this.sent.push(req);
    // The kernel computes with the pair it holds when the request arrives, not when it is answered.
    req.pairAtKernel = [...this.attrs.group_pair];
    req.scanAtKernel = { label: this.attrs.scan_label, pair: [...this.attrs.scan_pair] };
    if (this.hold) this.held.push(req);
    else setTimeout(() => this.answer(req), 0);
  }
  /** Answers the oldest held request matching `pred` (test helper for held requests). */
  release(pred: (req: Record<string, any>) => boolean = () => true): Record<string, any> {
    const i = this.held.findIndex(pred);
    if (i < 0) throw new Error(`no held request matches: ${JSON.stringify(this.held.map((r) => [r.kind, r.layer]))}`);
    const [req] = this.held.splice(i, 1);
    this.answer(req);
    return req;
  }
  /** As a live refresh (`w.refresh()` in a running cell): sends the data for `req` unasked, as a push. */
  push(req: Record<string, any>): void {
    this.pushing = true;
    try {
      this.answer({ id: null, pairAtKernel: [], ...req });
    } finally {
      this.pushing = false;
    }
  }
  private pushing = false;
  /** Answers every held request, oldest first, including those sent meanwhile. */
  releaseAll(): void {
    while (this.held.length > 0) this.release();
  }
  private reply(
    req: Record<string, any>,
    meta: Record<string, unknown>,
    arrays: [string, string, number[], ArrayBufferView][],
  ): void {
    const msg = {
      type: this.pushing ? "push" : "reply",
      v: 1,
      id: req.id,
      kind: req.kind,
      ok: true,
      meta: { revision: req.revision, ...meta },
      arrays: arrays.map(([name, dtype, shape]) => ({ name, dtype, shape })),
    };
    // Each buffer sits at an odd offset of a larger one, as comm buffers may.
    const buffers = arrays.map(([, , , a]) => {
      const backing = new Uint8Array(a.byteLength + 1);
      backing.set(new Uint8Array(a.buffer, a.byteOffset, a.byteLength), 1);
      return new DataView(backing.buffer, 1, a.byteLength);
    });
    for (const h of this.handlers.get("msg:custom") ?? []) h(msg, buffers);
  }
  private error(req: Record<string, any>, error: string): void {
    for (const h of this.handlers.get("msg:custom") ?? [])
      h({ type: "reply", v: 1, id: req.id, kind: req.kind, ok: false, error }, []);
  }
  private answer(req: Record<string, any>): void {
    const layerIndex = this.attrs.layers.findIndex((l) => l.name === req.layer);
    const shape = this.attrs.layers[layerIndex]?.shape;
    if (req.layer === "broken") {
      for (const h of this.handlers.get("msg:custom") ?? []) {
        h(
          {
            type: "reply",
            v: 1,
            id: req.id,
            kind: req.kind,
            ok: false,
            error: 'capture of "broken" failed: shape (1, 3) is not 4-D',
          },
          [],
        );
      }
      return;
    }
    if (req.kind === "ablate") {
      // As the kernel: channel 3 is out of range for this layer; otherwise the trait is set, then the reply sent.
      if (req.channels.includes(3)) {
        this.error(req, `channels [3] cannot be ablated: layer '${req.layer}' has 3 channels (0 to 2)`);
        return;
      }
      this.set("ablation", { ...ABLATION, layer: req.layer, channels: req.channels });
      this.reply(req, { layer: req.layer, channels: req.channels }, []);
    } else if (req.kind === "gradcam" && req.method !== "gradcam" && req.layer === "relu1") {
      this.error(
        req,
        `${req.method} hooks whole modules, so it needs a module's first call with a tensor output; layer 'relu1' is call 2 of module 'relu'`,
      );
    } else if (req.kind === "gradcam" && req.method !== "gradcam") {
      // pytorch-grad-cam's maps: input-sized (16×16), on [0, 1], no channel weights.
      const heatmap = new Float32Array(256).map((_, i) => (i % 16) / 15);
      this.reply(
        req,
        {
          layer: req.layer,
          sample: req.sample,
          target: req.target ?? 285,
          label: "Egyptian cat",
          shape: [16, 16],
          method: req.method,
          normalized: true,
        },
        [
          ["heatmap", "float32", [16, 16], heatmap],
          ["weights", "float32", [0], new Float32Array(0)],
        ],
      );
    } else if (req.kind === "layer" && req.layer === "big") {
      this.answerBig(req);
    } else if (req.kind === "layer" && shape !== undefined && (shape[1] !== C || shape[2] !== H || shape[3] !== W)) {
      // A layer of another shape: a flat map, as the kernel would send it.
      const [, c, h, w] = shape;
      const stats = new Float32Array(c * 6);
      for (let i = 0; i < c; i++) stats.set([0, 1, 0.5, 0, 0, 0], 6 * i);
      this.reply(
        req,
        { layer: req.layer, sample: req.sample, shape: [c, h, w], stored: [c, h, w], downsample: 1, channels: null },
        [
          ["values", "uint8", [c, h, w], new Uint8Array(c * h * w).fill(100)],
          ["stats", "float32", [c, 6], stats],
          ["flags", "uint8", [c], new Uint8Array(c)],
        ],
      );
    } else if (req.kind === "layer") {
      const values = new Uint8Array(C * H * W);
      const stats = new Float32Array(C * 6);
      for (let c = 0; c < C; c++) {
        const lo = activation(layerIndex, c, 0, W - 1);
        const hi = activation(layerIndex, c, H - 1, 0);
        stats.set([lo, hi, (lo + hi) / 2, 0, 0, 0], 6 * c);
        for (let r = 0; r < H; r++) {
          for (let col = 0; col < W; col++) {
            const v = activation(layerIndex, c, r, col);
            values[(c * H + r) * W + col] = Math.round(((v - lo) / (hi - lo)) * 254);
          }
        }
      }
      const replyMeta: Record<string, unknown> = {
        layer: req.layer,
        sample: req.sample,
        shape: [C, H, W],
        stored: [C, H, W],
        downsample: 1,
        channels: null,
      };
      const arrays: [string, string, number[], ArrayBufferView][] = [
        ["values", "uint8", [C, H, W], values],
        ["stats", "float32", [C, 6], stats],
        ["flags", "uint8", [C], Uint8Array.from(this.flags[req.layer] ?? [0, 0, 0, 0])],
      ];
      if (this.attrs.scan_info?.layers.includes(req.layer)) this.addScan(req, replyMeta, arrays);
      const pair = req.pairAtKernel as string[];
      if (this.attrs.groups.length > 0 && pair.length === 2) {
        const examples: Record<string, number[]> = {};
        this.attrs.groups.forEach((g, i) => {
          examples[g] ??= [];
          examples[g].push(i);
        });
        const counts = Object.fromEntries(Object.entries(examples).map(([g, list]) => [g, list.length]));
        replyMeta.groups = { pair, counts, examples };
        // The pair's order sets the sign of d.
        const sign = pair[0] < pair[1] ? 1 : -1;
        arrays.push(["effect", "float32", [C], Float32Array.from(EFFECT, (d) => sign * d)]);
      }
      this.reply(req, replyMeta, arrays);
    } else if (req.kind === "channel") {
      const values = new Float32Array(H * W);
      for (let r = 0; r < H; r++)
        for (let col = 0; col < W; col++) values[r * W + col] = activation(layerIndex, req.channel, r, col);
      const filter = new Float32Array(2 * 3 * 3).map((_, i) => (i % 5) - 2);
      this.reply(
        req,
        {
          layer: req.layer,
          sample: req.sample,
          channel: req.channel,
          shape: [H, W],
          filter_shape: [2, 3, 3],
          rgb: false,
        },
        [
          ["values", "float32", [H, W], values],
          ["filter", "float32", [2, 3, 3], filter],
        ],
      );
    } else if (req.kind === "examples") {
      this.answerExamples(req);
    } else if (req.kind === "use_example") {
      if (req.index === 13) {
        this.error(req, "image 13 is out of range: the dataset has 12");
        return;
      }
      // As the kernel: the new capture's traits first, then the reply (computed for the old revision).
      this.set("revision", this.attrs.revision + 1);
      this.reply(req, { index: req.index }, []);
    } else if (req.kind === "input") {
      this.reply(req, { sample: req.sample, shape: [16, 16, 3] }, [
        ["image", "uint8", [16, 16, 3], new Uint8Array(16 * 16 * 3).fill(128 + 100 * req.sample)],
      ]);
    } else if (!this.classifier) {
      const error = "Grad-CAM needs a classifier: the model's output has shape (1, 4, 8, 8), expected (N, classes)";
      for (const h of this.handlers.get("msg:custom") ?? [])
        h({ type: "reply", v: 1, id: req.id, kind: req.kind, ok: false, error }, []);
    } else {
      const target = req.target ?? 285;
      this.reply(
        req,
        { layer: req.layer, sample: req.sample, target, label: target === 285 ? "Egyptian cat" : null, shape: [4, 4] },
        [
          ["heatmap", "float32", [4, 4], heatmapOf(req.layer)],
          ["weights", "float32", [C], Float32Array.from(GRADCAM_WEIGHTS)],
        ],
      );
    }
  }

  /** The scan part of a layer reply (SCAN_* below); channel 2 is dead across the dataset (flag 8). */
  private addScan(
    req: Record<string, any>,
    meta: Record<string, unknown>,
    arrays: [string, string, number[], ArrayBufferView][],
  ): void {
    const { label, pair } = req.scanAtKernel as { label: string | null; pair: string[] };
    const flags = arrays.find(([name]) => name === "flags")![3] as Uint8Array;
    flags[2] |= 8;
    meta.scan = { images: 1000, dead: 1, label, pair };
    arrays.push(
      ["scan_mean", "float32", [C], Float32Array.from(SCAN_MEAN)],
      ["scan_max", "float32", [C], Float32Array.from(SCAN_MAX)],
      ["scan_active", "float32", [C], Float32Array.from(SCAN_ACTIVE)],
    );
    if (label !== null) arrays.push(["scan_selectivity", "float32", [C], Float32Array.from(SCAN_SELECTIVITY)]);
    if (pair.length === 2) {
      meta.scan = { ...(meta.scan as object), counts: { [pair[0]]: 340, [pair[1]]: 330 }, examples: {} };
      arrays.push(["scan_effect", "float32", [C], Float32Array.from(SCAN_EFFECT)]);
    }
  }

  /** Three 2×3 crops of one colour each (index 10 + rank), values 9.12, 7.5, 3; none without `dataset`. */
  examplesCrops = true;
  private answerExamples(req: Record<string, any>): void {
    if (req.channel === 3) {
      this.error(req, "the scan's examples file is unreadable");
      return;
    }
    const values = [9.12, 7.5, 3];
    const examples = values.map((value, rank) => ({
      index: 10 + rank + 10 * req.channel,
      value,
      row: rank,
      col: 1,
      label: String(rank % 2),
      ...(this.examplesCrops ? { box: [0, 0, 2, 3], peak: [1, 1], shape: [2, 3], offset: rank * 18 } : {}),
    }));
    const meta = { layer: req.layer, channel: req.channel, examples };
    if (!this.examplesCrops) {
      this.reply(req, { ...meta, crops: false, note: "no crops: pass dataset= to the widget" }, []);
      return;
    }
    const pixels = new Uint8Array(3 * 18);
    for (let rank = 0; rank < 3; rank++) pixels.fill(50 + 100 * rank, 18 * rank, 18 * rank + 18);
    this.reply(req, { ...meta, crops: true }, [["pixels", "uint8", [54], pixels]]);
  }

  /** Full resolution: value = channel + row / 16 + col / 256 (all distinct); pooled: 2×2 means of that. */
  private answerBig(req: Record<string, any>): void {
    const channels: number[] = req.channels ?? Array.from({ length: BIG_C }, (_, c) => c);
    const full = req.channels !== undefined;
    const n = full ? BIG : BIG / 2;
    const f = full ? 1 : 2;
    const values = new Uint8Array(channels.length * n * n);
    const stats = new Float32Array(channels.length * 6);
    channels.forEach((c, i) => {
      const lo = c;
      const hi = c + 15 / 16 + 15 / 256;
      stats.set([lo, hi, (lo + hi) / 2, c === 0 ? 1 / 256 : 0, 0, 0], 6 * i);
      for (let r = 0; r < n; r++) {
        for (let col = 0; col < n; col++) {
          // The mean of an f×f block is the value at its centre (the map is linear).
          const v = c + (r * f + (f - 1) / 2) / 16 + (col * f + (f - 1) / 2) / 256;
          values[(i * n + r) * n + col] = Math.round(((v - lo) / (hi - lo)) * 254);
        }
      }
    });
    this.reply(
      req,
      {
        layer: "big",
        sample: req.sample,
        shape: [BIG_C, BIG, BIG],
        stored: [channels.length, n, n],
        downsample: f,
        channels: req.channels ?? null,
      },
      [
        ["values", "uint8", [channels.length, n, n], values],
        ["stats", "float32", [channels.length, 6], stats],
        ["flags", "uint8", [channels.length], new Uint8Array(channels.length)],
      ],
    );
  }
}

function traits(): Traits {
  return {
    layers: [
      meta("conv1", "Conv2d", { post: "relu1" }),
      meta("relu1", "ReLU6", { kind: "act", pre: "conv1" }),
      meta("broken", "Conv2d"),
      meta("big", "Conv2d", { shape: [1, BIG_C, BIG, BIG] }),
    ],
    layer: "conv1",
    channel: null,
    sample: 0,
    num_samples: 1,
    colormap: "gray",
    scale: "channel",
    symmetric: false,
    revision: 1,
    status: { state: "ready", message: "" },
    predictions: [],
    sort: "index",
    top_k: 0,
    selected: [],
    height: 300,
    gradcam: false,
    target: null,
    view: { zoom: 1, x: 0.5, y: 0.5 },
    groups: [],
    group_pair: [],
    ablation: null,
    cam_method: "gradcam",
    cam_methods: ["gradcam"],
    scan_info: null,
    scan_label: null,
    scan_pair: [],
    task: null,
    step: null,
    steps: [],
    now_label: "",
    training: false,
    frame: 0,
    frames: 0,
  };
}

const CAM_METHODS = ["gradcam", "gradcam++", "scorecam", "eigencam"];

/** What the kernel's ablation of channels 1 and 3 of conv1 reports for two samples. */
const ABLATION = {
  layer: "conv1",
  channels: [1, 3],
  changes: [
    {
      top_before: 285,
      label_before: "Egyptian cat",
      prob_before: 0.712,
      top_after: 281,
      label_after: "tabby",
      prob_after: 0.45,
      prob_change: -0.311,
    },
    {
      top_before: 17,
      label_before: null,
      prob_before: 0.5,
      top_after: 17,
      label_after: null,
      prob_after: 0.52,
      prob_change: 0.02,
    },
  ],
};

const hosts: HTMLElement[] = [];
const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const fn of cleanups.splice(0)) fn();
  for (const h of hosts.splice(0)) h.remove();
});

async function mount(
  extra: Partial<Traits> = {},
  configure: (model: FakeWidgetModel) => void = () => {},
): Promise<{
  model: FakeWidgetModel;
  el: HTMLElement;
  root: HTMLElement;
  cleanup: () => void;
  controller: AbortController;
}> {
  const model = new FakeWidgetModel({ ...traits(), ...extra });
  configure(model);
  const el = document.createElement("div");
  el.style.width = "720px";
  document.body.append(el);
  hosts.push(el);
  const controller = new AbortController();
  const cleanup = (await widget.render({
    model: model as never,
    el,
    signal: controller.signal,
    host: {} as never,
    experimental: {} as never,
  })) as () => void;
  cleanups.push(cleanup);
  const root = el.querySelector<HTMLElement>(".fmwidget")!;
  return { model, el, root, cleanup, controller };
}

const nextFrame = (): Promise<void> => new Promise((r) => requestAnimationFrame(() => r()));

/** The tooltip's text after the pointer rests at (x, y) CSS px of the grid canvas. */
async function tooltipAt(root: HTMLElement, x: number, y: number): Promise<string> {
  const canvas = root.querySelector<HTMLCanvasElement>('canvas[aria-label="Feature maps"]')!;
  const tooltip = root.querySelector<HTMLElement>(".fm-grid-tooltip")!;
  // Moving off and back makes the grid hit-test again even when the pointer was there before.
  await userEvent.hover(canvas, { position: { x: x + 3, y: y + 3 } });
  await userEvent.hover(canvas, { position: { x, y } });
  // The grid hit-tests in its next frame; rAF callbacks run in the order they were asked for.
  await nextFrame();
  await expect.poll(() => tooltip.hidden).toBe(false);
  return [...tooltip.children].map((line) => line.textContent).join("\n");
}

/** "Channel c" and "row r, col c" of a tooltip: which tile and data pixel the pointer is on. */
function where(tooltip: string): string {
  return `${/Channel \d+/.exec(tooltip)?.[0]} ${/row \d+, col \d+/.exec(tooltip)?.[0]}`;
}

/** (row, col) of the hottest pixel of the Grad-CAM picture: Turbo's top is dark red, its bottom blue. */
function hottest(picture: HTMLCanvasElement): [number, number] {
  const { data, width } = picture.getContext("2d")!.getImageData(0, 0, picture.width, picture.height);
  let best = -Infinity;
  let at: [number, number] = [-1, -1];
  for (let i = 0; i < data.length; i += 4) {
    const heat = data[i] - data[i + 2];
    if (heat > best) {
      best = heat;
      at = [Math.floor(i / 4 / width), (i / 4) % width];
    }
  }
  return at;
}

describe("FeatureMapWidget view", () => {
  it("goes from loading to ready once the grid has drawn the layer", async () => {
    const { root, model } = await mount();
    expect(root.dataset.state).toBe("loading");
    expect(root.textContent).toContain("Loading conv1");
    await expect.poll(() => root.dataset.state).toBe("ready");
    expect(model.sent[0]).toMatchObject({ type: "request", kind: "layer", layer: "conv1", sample: 0, revision: 1 });
    expect(root.querySelector(".fm-header")!.textContent).toContain("4 × 8 × 8");
  });

  it("says so when ipywidgets disconnects the widget (kernel restarted), keeping the picture", async () => {
    const { root, model } = await mount();
    await expect.poll(() => root.dataset.state).toBe("ready");
    for (const h of model.handlers.get("comm_live_update") ?? []) h();
    const banner = root.querySelector<HTMLElement>(".fm-banner")!;
    expect(banner.hidden).toBe(false);
    expect(banner.textContent).toContain("kernel restarted");
    expect(root.dataset.kernel).toBe("gone");
    expect(root.dataset.state).toBe("ready");
  });

  it("shows the model's top prediction for the shown sample in the header", async () => {
    const predictions = [
      [{ index: 285, label: "Egyptian cat", prob: 0.712 }],
      [{ index: 17, label: null, prob: 0.004 }],
    ];
    const { root, model } = await mount({ predictions, num_samples: 2 });
    const chip = root.querySelector<HTMLElement>(".fm-header .fm-prediction")!;
    expect(chip.hidden).toBe(false);
    expect(chip.textContent).toBe("Egyptian cat 71%");
    model.set("sample", 1);
    expect(chip.textContent).toBe("class 17 0.4%");
    model.set("predictions", []);
    expect(chip.hidden).toBe(true);
  });

  it("sets the model's layer from the slider and draws it", async () => {
    const { root, model } = await mount();
    await expect.poll(() => root.dataset.state).toBe("ready");
    const slider = root.querySelector<HTMLInputElement>('input[aria-label="Layer"]')!;
    slider.value = "1";
    slider.dispatchEvent(new Event("input"));
    await expect.poll(() => model.get("layer")).toBe("relu1");
    expect(model.saves).toBeGreaterThan(0);
    await expect.poll(() => root.dataset.state).toBe("ready");
    expect(root.querySelector(".fm-header .fm-title")!.textContent).toBe("relu1");
  });

  it("opens a channel on a tile click, reads exact values under the pointer, and closes on Esc", async () => {
    const { root, model } = await mount();
    await expect.poll(() => root.dataset.state).toBe("ready");
    const canvas = root.querySelector<HTMLCanvasElement>('canvas[aria-label="Feature maps"]')!;
    // The first tile sits at the grid's top-left corner.
    await userEvent.click(canvas, { position: { x: 4, y: 4 } });
    await expect.poll(() => model.get("channel")).toBe(0);
    const detail = root.querySelector<HTMLElement>('[aria-label="Channel detail"]')!;
    expect(detail.hidden).toBe(false);
    await expect.poll(() => detail.dataset.state).toBe("ready");

    const map = detail.querySelector<HTMLCanvasElement>('canvas[aria-label="Channel map"]')!;
    const rect = map.getBoundingClientRect();
    const [row, col] = [5, 2];
    await userEvent.hover(map, {
      position: { x: ((col + 0.5) / W) * rect.width, y: ((row + 0.5) / H) * rect.height },
    });
    const readout = detail.querySelector('[aria-label="Value"]')!;
    await expect
      .poll(() => readout.textContent)
      .toBe(`${exactValue(activation(0, 0, row, col))} at (row ${row}, col ${col})`);
    // The pointed pixel is ringed on the map (and on the input picture, once it is there).
    const marker = detail.querySelector<HTMLElement>(".fm-detail-map .fm-pixel-marker")!;
    expect(marker.hidden).toBe(false);
    // Centred on the pixel, in the map's offset coordinates (the stylesheet positions it absolutely).
    const centre = (start: string, size: string): number => Number.parseFloat(start) + Number.parseFloat(size) / 2;
    expect(centre(marker.style.left, marker.style.width)).toBeCloseTo(
      map.offsetLeft + ((col + 0.5) / W) * map.clientWidth,
      3,
    );
    expect(centre(marker.style.top, marker.style.height)).toBeCloseTo(
      map.offsetTop + ((row + 0.5) / H) * map.clientHeight,
      3,
    );
    await userEvent.unhover(map);
    expect(marker.hidden).toBe(true);

    root.querySelector<HTMLButtonElement>('[aria-label="Next channel"]')!.click();
    await expect.poll(() => model.get("channel")).toBe(1);

    map.focus();
    await userEvent.keyboard("{Escape}");
    await expect.poll(() => model.get("channel")).toBe(null);
    expect(detail.hidden).toBe(true);
  });

  it("a double-click on a tile (to reset the zoom) leaves the channel and selection as they were", async () => {
    const { root, model } = await mount();
    await expect.poll(() => root.dataset.state).toBe("ready");
    const canvas = root.querySelector<HTMLCanvasElement>('canvas[aria-label="Feature maps"]')!;
    const cell = Number(canvas.dataset.cellWidth);
    await userEvent.click(canvas, { position: { x: 4, y: 4 } });
    await expect.poll(() => model.get("channel")).toBe(0);
    await userEvent.dblClick(canvas, { position: { x: cell + 4, y: 4 } });
    await nextFrame();
    expect(model.get("channel")).toBe(0);
    // Shift+double-click as the browser sends it (vitest's dblClick drops the second click with a modifier).
    const r = canvas.getBoundingClientRect();
    const at = { clientX: r.left + cell + 4, clientY: r.top + 4, shiftKey: true, bubbles: true };
    canvas.dispatchEvent(new MouseEvent("click", { ...at, detail: 1 }));
    expect(model.get("selected")).toEqual([1]);
    canvas.dispatchEvent(new MouseEvent("click", { ...at, detail: 2 }));
    canvas.dispatchEvent(new MouseEvent("dblclick", { ...at, detail: 2 }));
    await nextFrame();
    expect(model.get("selected")).toEqual([]);
    expect(model.get("channel")).toBe(0);
  });

  it("opens the channel view when Python sets the channel", async () => {
    const { root, model } = await mount();
    await expect.poll(() => root.dataset.state).toBe("ready");
    model.set("channel", 3);
    const detail = root.querySelector<HTMLElement>('[aria-label="Channel detail"]')!;
    await expect.poll(() => detail.dataset.state).toBe("ready");
    expect(detail.textContent).toContain("channel 3 of 4");
    expect(model.sent.some((m) => m.kind === "channel" && m.channel === 3)).toBe(true);
  });

  it("shows an error reply as a readable error state", async () => {
    const { root, model } = await mount();
    await expect.poll(() => root.dataset.state).toBe("ready");
    model.set("layer", "broken");
    await expect.poll(() => root.dataset.state).toBe("error");
    const alert = root.querySelector<HTMLElement>('[role="alert"]')!;
    expect(alert.hidden).toBe(false);
    expect(alert.textContent).toContain('Could not load layer "broken"');
    expect(alert.textContent).toContain("shape (1, 3) is not 4-D");
    model.set("layer", "conv1");
    await expect.poll(() => root.dataset.state).toBe("ready");
  });

  it("reloads when the revision changes, even for the same layer", async () => {
    const { root, model } = await mount();
    await expect.poll(() => root.dataset.state).toBe("ready");
    const before = model.sent.filter((m) => m.kind === "layer" && m.layer === "conv1").length;
    model.set("revision", 2);
    await expect.poll(() => root.dataset.state).toBe("ready");
    const after = model.sent.filter((m) => m.kind === "layer" && m.layer === "conv1");
    expect(after.length).toBe(before + 1);
    expect(after.at(-1)!.revision).toBe(2);
  });

  it("draws the layer and channel a live refresh pushed while the kernel is busy, without asking for them", async () => {
    const { root, model } = await mount({ channel: 1 });
    await expect.poll(() => root.dataset.state).toBe("ready");
    const bar = root.querySelector<HTMLElement>(".fm-step-row")!;
    expect(bar.hidden).toBe(true);
    // The training cell runs: nothing the view asks for is answered until it ends.
    model.hold = true;
    model.push({ kind: "layer", layer: "conv1", sample: 0, revision: 2 });
    model.push({ kind: "channel", layer: "conv1", sample: 0, channel: 1, revision: 2 });
    model.set("now_label", "step 40");
    model.set("revision", 2);
    await nextFrame();
    await nextFrame();
    expect(root.dataset.state).toBe("ready");
    const asked = model.sent.filter((m) => m.revision === 2 && m.layer === "conv1");
    expect(asked.filter((m) => m.kind === "layer" || m.kind === "channel")).toEqual([]);
    expect(bar.hidden).toBe(false);
    expect(bar.textContent).toContain("step 40 (live)");
  });

  it("moves through a video clip with the frame slider and plays it one kernel run at a time", async () => {
    const { root, model } = await mount();
    const bar = root.querySelector<HTMLElement>(".fm-frame-row")!;
    expect(bar.hidden).toBe(true);
    const layers = model.get("layers").map((m) => ({ ...m, layout: "ncthw" as const, frames: 4, frame: 1 }));
    model.set("layers", layers);
    model.set("frames", 8);
    model.set("frame", 3);
    await expect.poll(() => bar.hidden).toBe(false);
    const slider = bar.querySelector<HTMLInputElement>('input[aria-label="Video frame"]')!;
    expect(slider.max).toBe("7");
    expect(slider.value).toBe("3");
    expect(bar.querySelector(".fm-frame-label")!.textContent).toBe("frame 3 of 8 · layer frame 1 of 4");
    expect(root.querySelector(".fm-header")!.textContent).toContain("frame 1 of 4");
    slider.value = "6";
    slider.dispatchEvent(new Event("input"));
    expect(model.get("frame")).toBe(3);
    slider.dispatchEvent(new Event("change"));
    expect(model.get("frame")).toBe(6);
    // Play asks for the next frame, and for the one after only once the kernel has shown it.
    bar.querySelector<HTMLButtonElement>(".fm-frame-play")!.click();
    expect(model.get("frame")).toBe(7);
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(model.get("frame")).toBe(7);
    model.set("revision", 2);
    await expect.poll(() => model.get("frame"), { timeout: 2000 }).toBe(0);
    bar.querySelector<HTMLButtonElement>(".fm-frame-play")!.click();
    model.set("revision", 3);
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(model.get("frame")).toBe(0);
  });

  it("moves between checkpoints with the step slider; a saved file cannot", async () => {
    const steps = [
      { label: "0", kind: "checkpoint" as const },
      { label: "500", kind: "checkpoint" as const },
    ];
    const { root, model } = await mount({ steps, step: 1 });
    const slider = root.querySelector<HTMLInputElement>('input[aria-label="Training step"]')!;
    expect(slider.max).toBe("2");
    expect(slider.value).toBe("1");
    expect(root.querySelector(".fm-step-label")!.textContent).toBe("checkpoint 500 · 2 / 3");
    slider.value = "0";
    slider.dispatchEvent(new Event("input"));
    slider.dispatchEvent(new Event("change"));
    expect(model.get("step")).toBe(0);
    slider.value = "2";
    slider.dispatchEvent(new Event("change"));
    expect(model.get("step")).toBe(null);
    expect(root.querySelector(".fm-step-label")!.textContent).toBe("now · 3 / 3");
  });

  it("keeps keys inside the widget but lets Shift+Enter reach the notebook", async () => {
    const { root } = await mount();
    const seen: string[] = [];
    const spy = (ev: KeyboardEvent): void => {
      seen.push(`${ev.shiftKey ? "Shift+" : ""}${ev.key}`);
    };
    document.addEventListener("keydown", spy);
    try {
      root.querySelector<HTMLInputElement>('input[aria-label="Layer"]')!.focus();
      await userEvent.keyboard("{ArrowRight}");
      await userEvent.keyboard("{Shift>}{Enter}{/Shift}");
    } finally {
      document.removeEventListener("keydown", spy);
    }
    expect(seen).not.toContain("ArrowRight");
    expect(seen).toContain("Shift+Enter");
  });

  it("removes its listeners and elements when render's signal aborts", async () => {
    const { root, model, el, controller } = await mount();
    await expect.poll(() => root.dataset.state).toBe("ready");
    expect(model.listenerCount()).toBeGreaterThan(0);
    controller.abort();
    expect(model.listenerCount()).toBe(0);
    expect(el.childElementCount).toBe(0);
  });

  it("removes its listeners when render's cleanup runs, with a request still in flight", async () => {
    const { model, el, cleanup } = await mount();
    cleanup();
    expect(model.listenerCount()).toBe(0);
    expect(el.childElementCount).toBe(0);
    // The reply to the pending layer request arrives after cleanup and finds nobody listening.
    await new Promise((r) => setTimeout(r, 0));
    expect(el.childElementCount).toBe(0);
  });

  it("opens the Grad-CAM panel; the heatmap follows the layer slider and the class picker sets target", async () => {
    const predictions = [
      [
        { index: 285, label: "Egyptian cat", prob: 0.71 },
        { index: 17, label: null, prob: 0.1 },
      ],
    ];
    const { root, model } = await mount({ predictions });
    await expect.poll(() => root.dataset.state).toBe("ready");
    const panel = root.querySelector<HTMLElement>('[aria-label="Grad-CAM panel"]')!;
    expect(panel.hidden).toBe(true);
    root.querySelector<HTMLInputElement>('input[aria-label="Grad-CAM"]')!.click();
    expect(model.get("gradcam")).toBe(true);
    expect(panel.hidden).toBe(false);
    await expect.poll(() => panel.dataset.state).toBe("ready");
    const camRequests = (): Record<string, any>[] => model.sent.filter((m) => m.kind === "gradcam");
    expect(camRequests().at(-1)).toMatchObject({ layer: "conv1", sample: 0, target: null });
    const picture = panel.querySelector<HTMLCanvasElement>("canvas.fm-gradcam-picture")!;
    await expect.poll(() => panel.textContent).toContain("4 × 4 map, upsampled to 16 × 16");
    expect(panel.textContent).toContain("class: Egyptian cat (285)");
    // conv1's map peaks in its bottom-left cell: rows 12–15, columns 0–3 of the 16×16 input.
    const [r0, c0] = hottest(picture);
    expect(r0).toBeGreaterThanOrEqual(12);
    expect(c0).toBeLessThanOrEqual(3);
    // Each tile carries its channel's weight.
    expect(await tooltipAt(root, 5, 5)).toContain("Grad-CAM weight 0.1");

    const slider = root.querySelector<HTMLInputElement>('input[aria-label="Layer"]')!;
    slider.value = "1";
    slider.dispatchEvent(new Event("input"));
    await expect.poll(() => camRequests().at(-1)?.layer).toBe("relu1");
    await expect.poll(() => panel.querySelector(".fm-gradcam-layer")?.textContent).toBe("relu1");
    const [r1, c1] = hottest(picture);
    expect(r1).toBeLessThanOrEqual(3);
    expect(c1).toBeGreaterThanOrEqual(12);

    const classes = panel.querySelector<HTMLSelectElement>('select[aria-label="Class"]')!;
    expect(Array.from(classes.options).map((o) => o.textContent)).toEqual([
      "predicted",
      "Egyptian cat (71%)",
      "class 17 (10%)",
    ]);
    classes.value = "17";
    classes.dispatchEvent(new Event("change"));
    expect(model.get("target")).toBe(17);
    await expect.poll(() => camRequests().at(-1)).toMatchObject({ layer: "relu1", target: 17 });
    await expect.poll(() => panel.textContent).toContain("class: class 17");
  });

  it("shows a Grad-CAM error inside the panel and keeps the grid", async () => {
    const { root, model } = await mount({ gradcam: true }, (m) => (m.classifier = false));
    const panel = root.querySelector<HTMLElement>('[aria-label="Grad-CAM panel"]')!;
    await expect.poll(() => panel.dataset.state).toBe("error");
    expect(panel.querySelector('[role="alert"]')!.textContent).toContain("Grad-CAM needs a classifier");
    expect(panel.querySelector<HTMLElement>(".fm-gradcam-body")!.hidden).toBe(true);
    await expect.poll(() => root.dataset.state).toBe("ready");
    model.set("sort", "gradcam");
    expect(root.querySelector(".fm-readout")!.textContent).toContain(
      "Grad-CAM order unavailable: Grad-CAM needs a classifier",
    );
  });

  it("switches to the activation partner keeping the open channel, zoom and pan", async () => {
    const { root, model } = await mount({ channel: 2 });
    await expect.poll(() => root.dataset.state).toBe("ready");
    const canvas = root.querySelector<HTMLCanvasElement>('canvas[aria-label="Feature maps"]')!;
    const rect = canvas.getBoundingClientRect();
    // Zoomed around the top-left corner, a point far from it shows another pixel than unzoomed.
    canvas.dispatchEvent(
      new WheelEvent("wheel", { deltaY: -300, clientX: rect.left + 2, clientY: rect.top + 2, cancelable: true }),
    );
    await expect.poll(() => model.get("view").zoom).toBeGreaterThan(1.5);
    const [px, py] = [0.8 * rect.width, 0.8 * rect.height];
    const before = where(await tooltipAt(root, px, py));
    const toggle = root.querySelector<HTMLButtonElement>(".fm-header button")!;
    expect(toggle.textContent).toBe("after ReLU6 →");
    toggle.click();
    expect(model.get("layer")).toBe("relu1");
    await expect.poll(() => root.dataset.state).toBe("ready");
    expect(model.get("channel")).toBe(2);
    const detail = root.querySelector<HTMLElement>('[aria-label="Channel detail"]')!;
    await expect.poll(() => detail.textContent).toContain("relu1 — channel 2 of 4");
    expect(toggle.textContent).toBe("← before activation");
    expect(where(await tooltipAt(root, px, py))).toBe(before);
  });

  it("writes the user's zoom and pan to the view trait and applies a linked view's without echo", async () => {
    const { root, model } = await mount();
    await expect.poll(() => root.dataset.state).toBe("ready");
    const canvas = root.querySelector<HTMLCanvasElement>('canvas[aria-label="Feature maps"]')!;
    const rect = canvas.getBoundingClientRect();
    const saves = model.saves;
    for (let i = 0; i < 3; i++) {
      canvas.dispatchEvent(
        new WheelEvent("wheel", { deltaY: -60, clientX: rect.left + 40, clientY: rect.top + 30, cancelable: true }),
      );
    }
    await nextFrame();
    await nextFrame();
    // Three wheel events in one frame: one save.
    expect(model.saves).toBe(saves + 1);
    expect(model.get("view").zoom).toBeGreaterThan(1);

    // Another view moves: this one follows and writes nothing back.
    model.set("view", { zoom: 1, x: 0.5, y: 0.5 });
    const [x, y] = [0.37 * rect.width, 0.41 * rect.height];
    const unzoomed = where(await tooltipAt(root, x / 2, y / 2));
    model.set("view", { zoom: 2, x: 0.25, y: 0.25 });
    await nextFrame();
    await nextFrame();
    // Centred a quarter into the grid at zoom 2, screen (x, y) is the grid's (x/2, y/2).
    expect(where(await tooltipAt(root, x, y))).toBe(unzoomed);
    expect(model.saves).toBe(saves + 1);
    expect(model.get("view")).toEqual({ zoom: 2, x: 0.25, y: 0.25 });
  });

  it("tells the kernel of a long zoom at most every 150 ms, ending with the last view", async () => {
    const { root, model } = await mount();
    await expect.poll(() => root.dataset.state).toBe("ready");
    const canvas = root.querySelector<HTMLCanvasElement>('canvas[aria-label="Feature maps"]')!;
    const rect = canvas.getBoundingClientRect();
    const saves = model.saves;
    const started = performance.now();
    for (let i = 0; i < 8; i++) {
      canvas.dispatchEvent(
        new WheelEvent("wheel", { deltaY: -30, clientX: rect.left + 40, clientY: rect.top + 30, cancelable: true }),
      );
      await nextFrame();
    }
    const elapsed = performance.now() - started;
    expect(model.saves - saves).toBeLessThanOrEqual(Math.ceil(elapsed / 150) + 1);
    const last = model.get("view");
    let savedView: unknown = null;
    const save = model.save_changes.bind(model);
    model.save_changes = () => {
      savedView = model.get("view");
      save();
    };
    await expect.poll(() => savedView, { timeout: 2000 }).toEqual(last);
  });

  it("sorts tiles by group effect size and shows example inputs of each group", async () => {
    const groups = ["a", "b", "c", "b"];
    const { root, model } = await mount({ num_samples: 4, groups, group_pair: ["a", "b"] });
    await expect.poll(() => root.dataset.state).toBe("ready");
    const bar = root.querySelector<HTMLElement>(".fm-groups")!;
    await expect.poll(() => bar.textContent).toContain("channel 1, d = -1.8");
    expect(bar.textContent).toContain("n = 1 vs 2");
    const sample = root.querySelector<HTMLSelectElement>('select[aria-label="Sample"]')!;
    expect(sample.options[1].textContent).toBe("#1 · [b]");

    const sort = root.querySelector<HTMLSelectElement>('select[aria-label="Sort tiles"]')!;
    sort.value = "effect";
    sort.dispatchEvent(new Event("change"));
    expect(model.get("sort")).toBe("effect");
    // |d| order: 1 (-1.8), 2 (0.9), 0 (0.2), 3 (0.1); the first tile is channel 1 with its d as badge.
    const first = await tooltipAt(root, 5, 5);
    expect(first).toContain("Channel 1");
    expect(first).toContain("d -1.8");

    const example = [...bar.querySelectorAll("button")].find((b) => b.textContent === "example of b")!;
    example.click();
    expect(model.get("sample")).toBe(1);

    const layerRequests = (): number => model.sent.filter((m) => m.kind === "layer").length;
    const before = layerRequests();
    const pair = bar.querySelector<HTMLSelectElement>('select[aria-label="Group pair"]')!;
    pair.value = JSON.stringify(["b", "c"]);
    pair.dispatchEvent(new Event("change"));
    expect(model.get("group_pair")).toEqual(["b", "c"]);
    await expect.poll(layerRequests).toBeGreaterThan(before);
    await expect.poll(() => bar.textContent).toContain("n = 2 vs 1");
  });

  it("fetches the visible tiles of a downsampled layer at full resolution once zoomed in", async () => {
    const { root, model } = await mount({ layer: "big" });
    await expect.poll(() => root.dataset.state).toBe("ready");
    expect(root.querySelector(".fm-header")!.textContent).toContain("1/2 resolution");
    const fullRequests = (): Record<string, any>[] =>
      model.sent.filter((m) => m.kind === "layer" && m.channels !== undefined);
    // All 100 tiles visible: the pooled maps are what fits.
    await nextFrame();
    expect(fullRequests()).toEqual([]);
    expect(await tooltipAt(root, 4, 4)).toContain("mean of 2×2");

    model.set("view", { zoom: 8, x: 0.02, y: 0.04 });
    await expect.poll(() => fullRequests().length).toBe(1);
    const channels: number[] = fullRequests()[0].channels;
    expect(channels).toContain(0);
    expect(channels).not.toContain(99);
    expect(channels.length).toBeLessThan(64);
    expect(fullRequests()[0]).toMatchObject({ layer: "big", sample: 0 });
    // The tile now reads full-resolution pixels: value = row / 16 + col / 256 in channel 0.
    await expect.poll(async () => await tooltipAt(root, 20, 20)).not.toContain("mean of");
    const text = await tooltipAt(root, 20, 20);
    const [, row, col] = /row (\d+), col (\d+)/.exec(text)!.map(Number);
    const value = Number(/≈ (-?[\d.]+)/.exec(text)![1]);
    expect(value).toBeCloseTo(row / 16 + col / 256, 2);
  });
  it("names the layer under a dragged thumb in the header at once, marked as loading until drawn", async () => {
    const { root, model } = await mount();
    await expect.poll(() => root.dataset.state).toBe("ready");
    const header = root.querySelector<HTMLElement>(".fm-header")!;
    const title = header.querySelector(".fm-title")!;
    const pending = header.querySelector<HTMLElement>(".fm-header-pending")!;
    expect(pending.hidden).toBe(true);
    const slider = root.querySelector<HTMLInputElement>('input[aria-label="Layer"]')!;
    slider.value = "1";
    slider.dispatchEvent(new Event("input"));
    // Before the next frame, before any reply: the header already names the layer under the thumb.
    expect(title.textContent).toBe("relu1");
    expect(header.textContent).toContain("ReLU6");
    expect(pending.hidden).toBe(false);
    expect(model.get("layer")).toBe("conv1");
    // The slider row names nothing: one place for the layer's identity.
    const row = root.querySelector<HTMLElement>(".fm-layer-row")!;
    expect(row.textContent).toBe("2 / 4");
    await expect.poll(() => model.get("layer")).toBe("relu1");
    await expect.poll(() => root.dataset.state).toBe("ready");
    expect(pending.hidden).toBe(true);
    expect(title.textContent).toBe("relu1");

    // Dragged away and back within a frame: no layer change, the header returns to the shown layer.
    slider.value = "2";
    slider.dispatchEvent(new Event("input"));
    expect(title.textContent).toBe("broken");
    slider.value = "1";
    slider.dispatchEvent(new Event("input"));
    await nextFrame();
    expect(title.textContent).toBe("relu1");
    expect(pending.hidden).toBe(true);
    expect(header.getAttribute("aria-busy")).toBeNull();
  });

  it("shows an ablation from Python for the shown sample, marks its tiles and dismisses it", async () => {
    const predictions = [[{ index: 285, label: "Egyptian cat", prob: 0.712 }], [{ index: 17, label: null, prob: 0.5 }]];
    const { root, model } = await mount({ predictions, num_samples: 2 });
    await expect.poll(() => root.dataset.state).toBe("ready");
    const bar = root.querySelector<HTMLElement>('[aria-label="Ablation"]')!;
    expect(bar.hidden).toBe(true);
    model.set("ablation", ABLATION);
    expect(bar.hidden).toBe(false);
    const result = bar.querySelector<HTMLElement>('[role="status"]')!;
    expect(result.textContent).toBe(
      "Zeroed channels 1, 3 of conv1 (sample #0): Egyptian cat 71.2% → 40.1% (−31.1 pts) · now tabby 45.0%",
    );
    expect(bar.querySelector<HTMLElement>('[aria-label="Show the ablated layer"]')!.hidden).toBe(true);
    expect(await tooltipAt(root, 5, 5)).not.toContain("Zeroed");
    const cell = Number(root.querySelector<HTMLCanvasElement>('canvas[aria-label="Feature maps"]')!.dataset.cellWidth);
    expect(await tooltipAt(root, cell + 5, 5)).toContain("Zeroed in the last ablation");

    model.set("sample", 1);
    await expect
      .poll(() => result.textContent)
      .toContain("(sample #1): class 17 50.0% → 52.0% (+2.0 pts) · still the top class");
    expect(result.querySelector<HTMLElement>(".fm-ablation-points")!.dataset.trend).toBe("up");

    // On another layer the row offers to go back to the ablated one; that layer's tiles carry no marks.
    model.set("layer", "relu1");
    await expect.poll(() => root.dataset.state).toBe("ready");
    expect(await tooltipAt(root, cell + 5, 5)).not.toContain("Zeroed");
    const show = bar.querySelector<HTMLButtonElement>('[aria-label="Show the ablated layer"]')!;
    expect(show.hidden).toBe(false);
    show.click();
    expect(model.get("layer")).toBe("conv1");

    bar.querySelector<HTMLButtonElement>('[aria-label="Dismiss ablation"]')!.click();
    expect(model.get("ablation")).toBeNull();
    expect(bar.hidden).toBe(true);
  });

  it("ablates the shift-clicked tiles with the button and shows a failure readably", async () => {
    const predictions = [[{ index: 285, label: "Egyptian cat", prob: 0.712 }]];
    const { root, model } = await mount({ predictions });
    await expect.poll(() => root.dataset.state).toBe("ready");
    const canvas = root.querySelector<HTMLCanvasElement>('canvas[aria-label="Feature maps"]')!;
    const cell = Number(canvas.dataset.cellWidth);
    const bar = root.querySelector<HTMLElement>('[aria-label="Ablation"]')!;
    const button = bar.querySelector<HTMLButtonElement>('[aria-label="Ablate selected channels"]')!;
    expect(bar.hidden).toBe(true);
    await userEvent.click(canvas, { position: { x: 4, y: 4 }, modifiers: ["Shift"] });
    await userEvent.click(canvas, { position: { x: cell + 4, y: 4 }, modifiers: ["Shift"] });
    expect(model.get("selected")).toEqual([0, 1]);
    expect(bar.hidden).toBe(false);
    expect(button.hidden).toBe(false);
    expect(bar.querySelector<HTMLElement>('[aria-label="Show the ablated layer"]')!.hidden).toBe(true);
    expect(bar.querySelector<HTMLElement>('[aria-label="Dismiss ablation"]')!.hidden).toBe(true);
    expect(bar.textContent).toContain("2 channels selected");
    button.click();
    expect(button.disabled).toBe(true);
    expect(button.textContent).toBe("Ablating…");
    expect(model.sent.at(-1)).toMatchObject({
      type: "request",
      kind: "ablate",
      layer: "conv1",
      channels: [0, 1],
      revision: 1,
    });
    await expect
      .poll(() => bar.querySelector('[role="status"]')!.textContent)
      .toContain("Zeroed channels 0, 1 of conv1");
    expect(button.disabled).toBe(false);
    expect(await tooltipAt(root, 5, 5)).toContain("Zeroed in the last ablation");

    model.set("selected", [3]);
    button.click();
    const alert = bar.querySelector<HTMLElement>(".fm-ablation-error")!;
    await expect.poll(() => alert.getAttribute("role")).toBe("alert");
    expect(alert.hidden).toBe(false);
    expect(alert.textContent).toBe(
      "Ablation failed: channels [3] cannot be ablated: layer 'conv1' has 3 channels (0 to 2)",
    );
    // The earlier result stays; one dismiss clears both.
    expect(bar.querySelector<HTMLElement>('[role="status"]')!.hidden).toBe(false);
    bar.querySelector<HTMLButtonElement>('[aria-label="Dismiss ablation"]')!.click();
    expect(alert.hidden).toBe(true);
    expect(model.get("ablation")).toBeNull();
    model.set("selected", []);
    expect(bar.hidden).toBe(true);
  });

  it("picks a pytorch-grad-cam method: the trait and the request carry it, tiles lose their weights gracefully", async () => {
    const predictions = [[{ index: 285, label: "Egyptian cat", prob: 0.71 }]];
    const { root, model } = await mount({ predictions, gradcam: true, cam_methods: CAM_METHODS });
    const panel = root.querySelector<HTMLElement>('[aria-label="Grad-CAM panel"]')!;
    await expect.poll(() => panel.dataset.state).toBe("ready");
    const camRequests = (): Record<string, any>[] => model.sent.filter((m) => m.kind === "gradcam");
    expect(camRequests().at(-1)).toMatchObject({ layer: "conv1", method: "gradcam" });
    const picker = panel.querySelector<HTMLSelectElement>('select[aria-label="CAM method"]')!;
    expect(Array.from(picker.options).map((o) => o.textContent)).toEqual([
      "Grad-CAM (ours)",
      "Grad-CAM++",
      "Score-CAM (slow: one forward per channel — about 4 here)",
      "EigenCAM",
    ]);
    expect(await tooltipAt(root, 5, 5)).toContain("Grad-CAM weight 0.1");

    picker.value = "gradcam++";
    picker.dispatchEvent(new Event("change"));
    expect(model.get("cam_method")).toBe("gradcam++");
    await expect.poll(() => camRequests().at(-1)).toMatchObject({ layer: "conv1", method: "gradcam++", target: null });
    await expect.poll(() => panel.textContent).toContain("16 × 16 map at input resolution, scaled to [0, 1] per image");
    expect(panel.textContent).toContain("method: Grad-CAM++ (pytorch-grad-cam)");
    expect(await tooltipAt(root, 5, 5)).not.toContain("Grad-CAM weight");
    model.set("sort", "gradcam");
    await expect.poll(() => root.querySelector(".fm-readout")!.textContent).toContain("weights only for Grad-CAM");

    // A layer the method cannot hook: the panel says why, the grid stays.
    model.set("layer", "relu1");
    await expect.poll(() => panel.dataset.state).toBe("error");
    expect(panel.querySelector('[role="alert"]')!.textContent).toContain("hooks whole modules");
    await expect.poll(() => root.dataset.state).toBe("ready");

    // Python picks ours again: the picker follows and the weights come back.
    model.set("cam_method", "gradcam");
    expect(picker.value).toBe("gradcam");
    await expect.poll(() => panel.dataset.state).toBe("ready");
    await expect.poll(() => root.querySelector(".fm-readout")!.textContent).toBe("");
  });
});

/** Lets queued replies, promise callbacks and grid frames run. */
async function settle(model: FakeWidgetModel): Promise<void> {
  for (let i = 0; i < 6; i++) {
    model.releaseAll();
    await new Promise((r) => setTimeout(r, 5));
    await nextFrame();
  }
}

describe("FeatureMapWidget view: failures and races", () => {
  it("shows a layer the grid cannot take (zero channels) as an error, not loading forever", async () => {
    const layers = [meta("empty", "Conv2d", { shape: [1, 0, 8, 8] })];
    const { root } = await mount({ layers, layer: "empty" });
    await expect.poll(() => root.dataset.state).toBe("error");
    expect(root.querySelector(".fm-message-text")!.textContent).toContain('"empty"');
  });

  it("draws a map wider than the GPU's texture limit with Canvas 2D instead of hanging", async () => {
    const gl = document.createElement("canvas").getContext("webgl2")!;
    const max = gl.getParameter(gl.MAX_TEXTURE_SIZE) as number;
    gl.getExtension("WEBGL_lose_context")?.loseContext();
    const layers = [meta("wide", "Conv2d", { shape: [1, 2, 1, max + 8] })];
    const { root } = await mount({ layers, layer: "wide" });
    await expect.poll(() => root.dataset.state).toBe("ready");
    expect(root.querySelector<HTMLCanvasElement>('canvas[aria-label="Feature maps"]')!.dataset.backend).toBe(
      "canvas2d",
    );
  });

  it("keeps the error of a grid that cannot start (no 2D context) instead of a spinner", async () => {
    const original = HTMLCanvasElement.prototype.getContext;
    (HTMLCanvasElement.prototype as any).getContext = (): null => null;
    let root: HTMLElement;
    try {
      ({ root } = await mount());
    } finally {
      HTMLCanvasElement.prototype.getContext = original;
    }
    await new Promise((r) => setTimeout(r, 20));
    expect(root.dataset.state).toBe("error");
    expect(root.querySelector(".fm-message-text")!.textContent).toContain("could not start");
  });

  it("frees what it built and shows why when a part throws while the view is built", async () => {
    const { el, model } = await mount({}, (m) => {
      const get = m.get.bind(m);
      // The controls read the predictions once every part exists: a broken trait then stops the build.
      m.get = ((key: keyof Traits) => {
        if (key === "predictions") throw new Error("predictions unreadable");
        return get(key);
      }) as typeof m.get;
    });
    const root = el.querySelector<HTMLElement>(".fmwidget")!;
    expect(el.querySelectorAll(".fmwidget")).toHaveLength(1);
    expect(root.dataset.state).toBe("error");
    expect(root.textContent).toBe("The feature-map view could not start: predictions unreadable");
    // The comm listener and every change listener are gone, and the grid's canvas with its WebGL context.
    expect(model.listenerCount()).toBe(0);
    expect(el.querySelector("canvas")).toBeNull();
  });

  it("ends ready after going A, B, A with the first request still at the kernel", async () => {
    const { root, model } = await mount({}, (m) => (m.hold = true));
    model.set("layer", "relu1");
    model.set("layer", "conv1");
    await settle(model);
    await expect.poll(() => root.dataset.state).toBe("ready");
    expect(root.dataset.layer).toBe("conv1");
  });

  it("drops a neighbour's reply computed with the previous group pair", async () => {
    const groups = ["x", "y"];
    const { root, model } = await mount({ groups, group_pair: ["x", "y"], sort: "effect" }, (m) => (m.hold = true));
    model.release((r) => r.kind === "layer" && r.layer === "conv1");
    await expect.poll(() => root.dataset.state).toBe("ready");
    // The prefetch of relu1 is at the kernel, computed with (x, y); the user flips the pair.
    await expect.poll(() => model.held.some((r) => r.layer === "relu1")).toBe(true);
    model.set("group_pair", ["y", "x"]);
    await settle(model);
    model.set("layer", "relu1");
    await settle(model);
    await expect.poll(() => root.dataset.layer).toBe("relu1");
    // EFFECT's strongest is channel 1 at -1.8 for (x, y): (y, x) flips its sign.
    expect(root.querySelector(".fm-groups-top")!.textContent).toContain("d = +1.8");
  });

  it("takes the channel view's health row from the layer the channel belongs to", async () => {
    const { root, model } = await mount({ channel: 0 }, (m) => {
      m.hold = true;
      m.flags = { conv1: [1, 0, 0, 0] };
    });
    await settle(model);
    const stats = (): string => root.querySelector(".fm-stats")!.textContent ?? "";
    await expect.poll(stats).toContain("dead");
    model.held.length = 0;
    model.set("layer", "big");
    // The channel reply comes first, while the grid still holds conv1.
    model.release((r) => r.kind === "channel");
    await expect.poll(() => root.querySelector<HTMLElement>(".fm-detail")!.dataset.state).toBe("ready");
    expect(stats()).not.toContain("dead");
    model.release((r) => r.kind === "layer" && r.layer === "big");
    await expect.poll(() => root.dataset.layer).toBe("big");
    expect(stats()).not.toContain("dead");
  });

  it("lets Ctrl/Cmd shortcuts and Shift+Enter reach JupyterLab from a focused tile", async () => {
    const { root, model } = await mount();
    await expect.poll(() => root.dataset.state).toBe("ready");
    const canvas = root.querySelector<HTMLCanvasElement>('canvas[aria-label="Feature maps"]')!;
    canvas.focus();
    await userEvent.keyboard("{ArrowRight}"); // a focused tile
    const seen: string[] = [];
    const spy = (ev: KeyboardEvent): void => {
      seen.push(
        `${ev.ctrlKey ? "Ctrl+" : ""}${ev.metaKey ? "Meta+" : ""}${ev.shiftKey ? "Shift+" : ""}${ev.key}${ev.defaultPrevented ? " (prevented)" : ""}`,
      );
    };
    document.addEventListener("keydown", spy);
    try {
      for (const init of [
        { key: "s", ctrlKey: true },
        { key: "b", metaKey: true },
        { key: "Enter", shiftKey: true },
      ]) {
        canvas.dispatchEvent(new KeyboardEvent("keydown", { ...init, bubbles: true, cancelable: true }));
      }
    } finally {
      document.removeEventListener("keydown", spy);
    }
    expect(seen).toEqual(["Ctrl+s", "Meta+b", "Shift+Enter"]);
    expect(model.get("selected")).toEqual([]);
    // Shift+Space selects the focused tile from the keyboard.
    await userEvent.keyboard("{Shift>}{ }{/Shift}");
    expect(model.get("selected")).toEqual([1]);
  });

  it("never draws a sample's Grad-CAM heatmap over another sample's input picture", async () => {
    const { root, model } = await mount({ gradcam: true, num_samples: 2 });
    const panel = root.querySelector<HTMLElement>('[aria-label="Grad-CAM panel"]')!;
    const picture = panel.querySelector<HTMLCanvasElement>(".fm-gradcam-picture")!;
    // Mean brightness: the fake's input of sample 1 is brighter than sample 0's; the heatmaps are alike.
    const mean = (): number => {
      const px = picture.getContext("2d")!.getImageData(0, 0, picture.width, picture.height).data;
      let sum = 0;
      for (let i = 0; i < px.length; i += 4) sum += px[i] + px[i + 1] + px[i + 2];
      return sum / px.length;
    };
    await expect.poll(() => panel.dataset.state).toBe("ready");
    model.set("sample", 1);
    await settle(model);
    const sample1 = mean();
    model.set("sample", 0);
    await settle(model);
    const sample0 = mean();
    expect(sample1).toBeGreaterThan(sample0 + 10);
    model.hold = true;
    // Grad-CAM of sample 1 is cached; its input picture is asked for again.
    model.set("sample", 1);
    await nextFrame();
    expect(Math.abs(mean() - sample0)).toBeGreaterThan(1);
    await settle(model);
    expect(mean()).toBeCloseTo(sample1, 0);
  });

  it("asks again for a Grad-CAM that failed when its layer is shown again or the panel reopens", async () => {
    const { root, model } = await mount({ gradcam: true }, (m) => (m.classifier = false));
    const panel = root.querySelector<HTMLElement>('[aria-label="Grad-CAM panel"]')!;
    await expect.poll(() => panel.dataset.state).toBe("error");
    const asked = (): number => model.sent.filter((m) => m.kind === "gradcam" && m.layer === "conv1").length;
    expect(asked()).toBe(1);
    model.set("layer", "relu1");
    await expect.poll(() => root.dataset.layer).toBe("relu1");
    model.set("layer", "conv1");
    await expect.poll(asked).toBe(2);
    await expect.poll(() => panel.dataset.state).toBe("error");
    model.set("gradcam", false);
    model.set("gradcam", true);
    await expect.poll(asked).toBe(3);
  });
});

describe("FeatureMapWidget view with a dataset scan", () => {
  const SCAN = { images: 1000, k: 3, complete: true, labels: ["cat", "dog", "owl"], layers: ["conv1"], crops: true };
  const cellOf = (root: HTMLElement): number =>
    Number(root.querySelector<HTMLCanvasElement>('canvas[aria-label="Feature maps"]')!.dataset.cellWidth);
  const sortSelect = (root: HTMLElement) => root.querySelector<HTMLSelectElement>('select[aria-label="Sort tiles"]')!;
  const offered = (root: HTMLElement): string[] =>
    [...sortSelect(root).options].filter((o) => !o.hidden).map((o) => o.value);

  it("marks channels dead across the dataset apart from those dead on this batch, and says so in the header", async () => {
    // Channel 1 is zero on this batch only; channel 2 (the fake kernel's scan) is dead across the dataset.
    const layers = traits().layers.map((l) => (l.name === "conv1" ? { ...l, dead: 1 } : l));
    const { root } = await mount({ scan_info: SCAN, layers }, (m) => {
      m.flags.conv1 = [0, 1, 0, 0];
    });
    await expect.poll(() => root.dataset.state).toBe("ready");
    const health = root.querySelector(".fm-health")!;
    await expect.poll(() => health.textContent).toBe("1 of 4 dead across 1,000 images · 1 zero on this input");
    const cell = cellOf(root);
    const batchDead = await tooltipAt(root, cell + 5, 5);
    expect(batchDead).toContain("Channel 1 · dead");
    expect(batchDead).toContain("zero for every input of this batch");
    const datasetDead = await tooltipAt(root, 2 * cell + 5, 5);
    expect(datasetDead).toContain("Channel 2 · dead across the dataset");
    expect(datasetDead).toContain("Dead across the dataset (0 of 1,000 images > 0)");
    // The two marks differ on screen: hatching (dataset) against a cross (batch).
    const overlay = root.querySelector<HTMLCanvasElement>('canvas[aria-label="Feature maps"]')!;
    const g = overlay.getContext("2d")!;
    const dpr = overlay.width / overlay.clientWidth;
    const tileHeight = Number(overlay.dataset.tileHeight);
    const inked = (x0: number): number => {
      const data = g.getImageData(
        Math.round(x0 * dpr),
        0,
        Math.round((cell - 2) * dpr),
        Math.round(tileHeight * dpr),
      ).data;
      let n = 0;
      for (let i = 3; i < data.length; i += 4) if (data[i] > 0) n++;
      return n;
    };
    // Stripes and a border over channel 2 cover far more of its tile than channel 1's cross.
    expect(inked(2 * cell)).toBeGreaterThan(1.5 * inked(cell));
  });

  it("keeps the old health wording without a scan", async () => {
    const layers = traits().layers.map((l) => (l.name === "conv1" ? { ...l, dead: 1 } : l));
    const { root } = await mount({ layers });
    await expect.poll(() => root.dataset.state).toBe("ready");
    expect(root.querySelector(".fm-health")!.textContent).toBe("1 of 4 channels dead");
    expect(offered(root)).not.toContain("dataset_mean");
    expect(root.querySelector<HTMLElement>(".fm-scanbar")!.hidden).toBe(true);
  });

  it("offers the dataset sorts only where the scan covers the layer, and orders tiles by the scan arrays", async () => {
    const { root, model } = await mount({ scan_info: SCAN });
    await expect.poll(() => root.dataset.state).toBe("ready");
    expect(offered(root)).toEqual(expect.arrayContaining(["dataset_mean", "dataset_max", "dataset_active"]));
    expect(offered(root)).not.toContain("selectivity");
    expect(offered(root)).not.toContain("dataset_effect");
    const sort = sortSelect(root);
    sort.value = "dataset_max";
    sort.dispatchEvent(new Event("change"));
    expect(model.get("sort")).toBe("dataset_max");
    // SCAN_MAX [3, 1, 0, 2]: channel 0 first, then 3.
    expect(await tooltipAt(root, 5, 5)).toContain("Channel 0");
    expect(await tooltipAt(root, cellOf(root) + 5, 5)).toContain("Channel 3");
    model.set("sort", "dataset_active");
    // SCAN_ACTIVE [0.2, 0.9, 0, 0.5]: channel 1 first.
    await expect.poll(async () => await tooltipAt(root, 5, 5)).toContain("Channel 1");

    // A layer outside the scan: the dataset sorts go (except the one selected, with a note).
    model.set("layer", "relu1");
    await expect.poll(() => root.dataset.layer).toBe("relu1");
    expect(offered(root)).toContain("dataset_active");
    expect(offered(root)).not.toContain("dataset_mean");
    await expect
      .poll(() => root.querySelector(".fm-readout")!.textContent)
      .toContain('layer "relu1" is not in the scan');
  });

  it("picks a class (selectivity badges and sort) and a pair of groups (counts, d, effect sort)", async () => {
    const { root, model } = await mount({ scan_info: SCAN });
    await expect.poll(() => root.dataset.state).toBe("ready");
    const bar = root.querySelector<HTMLElement>(".fm-scanbar")!;
    expect(bar.hidden).toBe(false);
    expect(bar.textContent).toContain("1,000 images");
    const cls = bar.querySelector<HTMLSelectElement>('select[aria-label="Dataset class"]')!;
    expect([...cls.options].map((o) => o.textContent)).toEqual(["(none)", "cat", "dog", "owl"]);
    cls.value = "dog";
    cls.dispatchEvent(new Event("change"));
    expect(model.get("scan_label")).toBe("dog");
    await expect.poll(() => bar.textContent).toContain("most selective: channel 3 (0.8)");
    expect(await tooltipAt(root, 5, 5)).toContain("selectivity for dog -0.1");
    expect(offered(root)).toContain("selectivity");
    model.set("sort", "selectivity");
    // SCAN_SELECTIVITY [-0.1, 0.3, 0, 0.8]: channel 3 first, then 1.
    await expect.poll(async () => await tooltipAt(root, 5, 5)).toContain("Channel 3");

    const groups = bar.querySelector<HTMLElement>('[aria-label="Dataset groups"]')!;
    const [a, b] = [...groups.querySelectorAll("select")];
    a.value = "cat";
    a.dispatchEvent(new Event("change"));
    // The other side follows, so a whole pair is sent.
    expect(model.get("scan_pair")).toEqual(["cat", "dog"]);
    await expect.poll(() => bar.textContent).toContain("n = 340 vs 330");
    expect(bar.textContent).toContain("strongest: channel 1, d = -2.5");
    model.set("sort", "dataset_effect");
    // |SCAN_EFFECT| [0.4, 2.5, 0, 1.1]: channel 1 first, with its d as the badge.
    await expect.poll(async () => await tooltipAt(root, 5, 5)).toContain("Channel 1");
    expect(await tooltipAt(root, 5, 5)).toContain("d (cat vs dog, dataset) -2.5");
    b.value = "";
    b.dispatchEvent(new Event("change"));
    expect(model.get("scan_pair")).toEqual([]);
  });

  it("lists the open channel's top dataset examples; clicking one re-runs the kernel on it", async () => {
    const { root, model } = await mount({ scan_info: SCAN });
    await expect.poll(() => root.dataset.state).toBe("ready");
    model.set("channel", 1);
    const section = root.querySelector<HTMLElement>('[aria-label="Dataset examples"]')!;
    await expect.poll(() => section.dataset.state).toBe("ready");
    expect([...section.querySelectorAll(".fm-example-value")].map((e) => e.textContent)).toEqual(["9.12", "7.5", "3"]);
    expect(section.querySelectorAll("canvas.fm-example-crop")).toHaveLength(3);
    expect(section.querySelector(".fm-caption")!.textContent).toBe(
      "top 3 of 1,000 images; ring = where the channel peaks",
    );
    const revision = model.get("revision");
    section.querySelector<HTMLButtonElement>("button.fm-example-button")!.click();
    expect(model.sent.at(-1)).toMatchObject({ kind: "use_example", index: 20 });
    await expect.poll(() => model.get("revision")).toBe(revision + 1);
    await expect.poll(() => section.dataset.state).toBe("ready");
    expect(section.querySelector(".fm-examples-message")!.textContent).toBe("");
    // The channel view follows the new capture; the examples (the same scan) come from the cache.
    const detail = root.querySelector<HTMLElement>('[aria-label="Channel detail"]')!;
    await expect.poll(() => detail.dataset.state).toBe("ready");
    const asked = model.sent.filter((m) => m.kind === "examples").length;
    model.set("channel", 2);
    await expect.poll(() => section.querySelector(".fm-example-meta")?.textContent).toBe("#30 · 0");
    model.set("channel", 1);
    await expect.poll(() => section.querySelector(".fm-example-meta")?.textContent).toBe("#20 · 0");
    expect(model.sent.filter((m) => m.kind === "examples").length).toBe(asked + 1);

    // An error reply is shown as text.
    model.set("channel", 3);
    await expect.poll(() => section.dataset.state).toBe("error");
    expect(section.textContent).toContain("the scan's examples file is unreadable");
  });

  it("lists examples without pictures, with the kernel's note, when the widget has no dataset", async () => {
    const { root, model } = await mount({ scan_info: { ...SCAN, crops: false } }, (m) => {
      m.examplesCrops = false;
    });
    await expect.poll(() => root.dataset.state).toBe("ready");
    model.set("channel", 0);
    const section = root.querySelector<HTMLElement>('[aria-label="Dataset examples"]')!;
    await expect.poll(() => section.dataset.state).toBe("ready");
    expect(section.querySelectorAll("canvas")).toHaveLength(0);
    expect(section.querySelectorAll(".fm-example")).toHaveLength(3);
    expect(section.textContent).toContain("no crops: pass dataset= to the widget");
  });
});
