import { afterEach, describe, expect, it } from "vitest";
import { userEvent } from "vitest/browser";
import { exactValue } from "./detail";
import type { LayerMeta, Traits } from "./protocol";
import widget from "./widget";

const C = 4;
const H = 8;
const W = 8;

/** The synthetic activation of a layer: distinct per channel, row and column, so a readout can be checked. */
function activation(layerIndex: number, c: number, r: number, col: number): number {
  return Math.fround(layerIndex - 1.5 + c * 0.75 + r * 0.1 - col * 0.013);
}

function meta(name: string, type: string): LayerMeta {
  return {
    name,
    module: name,
    call: 1,
    type,
    shape: [1, C, H, W],
    dtype: "float32",
    min: -2,
    max: 4,
    dead: 0,
    constant: 0,
    nonfinite: 0,
    kind: "conv",
    pre: null,
    post: null,
    filter: type === "Conv2d",
  };
}

type Handler = (...args: any[]) => void;

/**
 * A stand-in for anywidget's model: Backbone-style get/set/on/off with local change events, and a kernel
 * behind `send` that answers each request (asynchronously, as a comm does) with synthetic data. A layer
 * named "broken" gets an error reply.
 */
class FakeWidgetModel {
  attrs: Traits;
  handlers = new Map<string, Set<Handler>>();
  sent: Record<string, unknown>[] = [];
  saves = 0;

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
    setTimeout(() => this.answer(req), 0);
  }
  private reply(req: Record<string, any>, meta: Record<string, unknown>, arrays: [string, string, number[], ArrayBufferView][]): void {
    const msg = {
      type: "reply",
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
  private answer(req: Record<string, any>): void {
    const layerIndex = this.attrs.layers.findIndex((l) => l.name === req.layer);
    if (req.layer === "broken") {
      for (const h of this.handlers.get("msg:custom") ?? []) {
        h({ type: "reply", v: 1, id: req.id, kind: req.kind, ok: false, error: 'capture of "broken" failed: shape (1, 3) is not 4-D' }, []);
      }
      return;
    }
    if (req.kind === "layer") {
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
      this.reply(
        req,
        { layer: req.layer, sample: req.sample, shape: [C, H, W], stored: [C, H, W], downsample: 1, channels: null },
        [
          ["values", "uint8", [C, H, W], values],
          ["stats", "float32", [C, 6], stats],
          ["flags", "uint8", [C], new Uint8Array(C)],
        ],
      );
    } else if (req.kind === "channel") {
      const values = new Float32Array(H * W);
      for (let r = 0; r < H; r++) for (let col = 0; col < W; col++) values[r * W + col] = activation(layerIndex, req.channel, r, col);
      const filter = new Float32Array(2 * 3 * 3).map((_, i) => (i % 5) - 2);
      this.reply(
        req,
        { layer: req.layer, sample: req.sample, channel: req.channel, shape: [H, W], filter_shape: [2, 3, 3], rgb: false },
        [
          ["values", "float32", [H, W], values],
          ["filter", "float32", [2, 3, 3], filter],
        ],
      );
    } else if (req.kind === "input") {
      this.reply(req, { sample: req.sample, shape: [16, 16, 3] }, [["image", "uint8", [16, 16, 3], new Uint8Array(16 * 16 * 3).fill(128)]]);
    } else {
      for (const h of this.handlers.get("msg:custom") ?? []) {
        h({ type: "reply", v: 1, id: req.id, kind: req.kind, ok: false, error: "not a classifier" }, []);
      }
    }
  }
}

function traits(): Traits {
  return {
    layers: [meta("conv1", "Conv2d"), meta("relu1", "ReLU"), meta("broken", "Conv2d")],
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
  };
}

const hosts: HTMLElement[] = [];
const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const fn of cleanups.splice(0)) fn();
  for (const h of hosts.splice(0)) h.remove();
});

async function mount(): Promise<{
  model: FakeWidgetModel;
  el: HTMLElement;
  root: HTMLElement;
  cleanup: () => void;
  controller: AbortController;
}> {
  const model = new FakeWidgetModel(traits());
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

describe("FeatureMapWidget view", () => {
  it("goes from loading to ready once the grid has drawn the layer", async () => {
    const { root, model } = await mount();
    expect(root.dataset.state).toBe("loading");
    expect(root.textContent).toContain("Loading conv1");
    await expect.poll(() => root.dataset.state).toBe("ready");
    expect(model.sent[0]).toMatchObject({ type: "request", kind: "layer", layer: "conv1", sample: 0, revision: 1 });
    expect(root.querySelector(".fm-header")!.textContent).toContain("4 × 8 × 8");
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
    await expect.poll(() => readout.textContent).toBe(`${exactValue(activation(0, 0, row, col))} at (row ${row}, col ${col})`);

    (root.querySelector<HTMLButtonElement>('[aria-label="Next channel"]')!).click();
    await expect.poll(() => model.get("channel")).toBe(1);

    map.focus();
    await userEvent.keyboard("{Escape}");
    await expect.poll(() => model.get("channel")).toBe(null);
    expect(detail.hidden).toBe(true);
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
});
