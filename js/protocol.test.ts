import { afterEach, describe, expect, it, vi } from "vitest";
import {
  decodeArray,
  decodeArrays,
  decodeExamples,
  decodePictures,
  isDropped,
  type Reply,
  type RequestDropped,
  RequestError,
  Requester,
  STATS_FIELDS,
  statOf,
  toLayerData,
} from "./protocol";
import { FakeComm } from "./testing/fake-comm";
import { layerMeta } from "./testing/fixtures";

/** A DataView over `bytes` placed at `offset` inside a larger buffer, as a comm message may deliver it. */
function viewAt(bytes: Uint8Array, offset: number): DataView {
  const backing = new Uint8Array(offset + bytes.length + 3);
  backing.fill(0xee);
  backing.set(bytes, offset);
  return new DataView(backing.buffer, offset, bytes.length);
}

function bytesOf(a: ArrayBufferView): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength).slice();
}

describe("decodeArray", () => {
  const floats = new Float32Array([1.5, -2.25, NaN, Infinity, 3e-8, 0]);

  it("views aligned float32 data without copying", () => {
    const view = viewAt(bytesOf(floats), 8);
    const out = decodeArray({ name: "values", dtype: "float32", shape: [2, 3] }, view);
    expect(out).toBeInstanceOf(Float32Array);
    expect(Array.from(out)).toEqual(Array.from(floats));
    expect(out.buffer).toBe(view.buffer);
    expect(out.byteOffset).toBe(8);
  });

  it("copies float32 data at an odd offset and keeps every value", () => {
    const view = viewAt(bytesOf(floats), 3);
    const out = decodeArray({ name: "values", dtype: "float32", shape: [6] }, view);
    expect(Array.from(out)).toEqual(Array.from(floats));
    expect(out.buffer).not.toBe(view.buffer);
  });

  it("copies int32 data at an offset that is even but not a multiple of 4", () => {
    const ints = new Int32Array([-1, 2147483647, 7]);
    const out = decodeArray({ name: "order", dtype: "int32", shape: [3] }, viewAt(bytesOf(ints), 2));
    expect(Array.from(out)).toEqual([-1, 2147483647, 7]);
  });

  it("views uint8 data at any offset", () => {
    const view = viewAt(new Uint8Array([0, 127, 254, 255]), 5);
    const out = decodeArray({ name: "values", dtype: "uint8", shape: [4] }, view);
    expect(Array.from(out)).toEqual([0, 127, 254, 255]);
    expect(out.buffer).toBe(view.buffer);
  });

  it("names the array, shape and byte counts when the buffer does not match", () => {
    const view = viewAt(new Uint8Array(10), 0);
    expect(() => decodeArray({ name: "stats", dtype: "float32", shape: [2, 6] }, view)).toThrow(
      /"stats" of shape \[2, 6\] float32 needs 48 bytes; its buffer has 10/,
    );
  });

  it("rejects an unknown dtype by name", () => {
    expect(() => decodeArray({ name: "x", dtype: "float64" as never, shape: [1] }, new ArrayBuffer(8))).toThrow(
      /dtype "float64"/,
    );
  });

  it("decodes a reply's list of arrays by name and checks the count", () => {
    const specs = [
      { name: "a", dtype: "uint8" as const, shape: [2] },
      { name: "b", dtype: "uint32" as const, shape: [1] },
    ];
    const out = decodeArrays(specs, [viewAt(new Uint8Array([1, 2]), 1), viewAt(bytesOf(new Uint32Array([9])), 4)]);
    expect(Array.from(out.a.data)).toEqual([1, 2]);
    expect(Array.from(out.b.data)).toEqual([9]);
    expect(() => decodeArrays(specs, [])).toThrow(/2 arrays but carries 0 buffers/);
  });
});

/** Just enough of an anywidget model: records what is sent, lets the test deliver replies. */
class FakeModel extends FakeComm {
  reply(request: Record<string, unknown>, extra: Record<string, unknown> = {}, buffers: DataView[] = []): void {
    const msg = {
      type: "reply",
      v: 1,
      id: request.id,
      kind: request.kind,
      ok: true,
      meta: { revision: request.revision },
      arrays: [],
      ...extra,
    };
    this.deliver(msg, buffers);
  }
}

function settled<T>(p: Promise<T>): Promise<{ value?: T; error?: unknown }> {
  return p.then(
    (value) => ({ value }),
    (error: unknown) => ({ error }),
  );
}

describe("Requester", () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it("sends a request envelope and resolves with the decoded reply", async () => {
    const model = new FakeModel();
    const r = new Requester(model, { revision: () => 4 });
    const p = r.request("input", { sample: 1 });
    const req = model.sent[0];
    expect(req).toMatchObject({ type: "request", kind: "input", sample: 1, revision: 4 });
    expect(typeof req.id).toBe("number");
    model.reply(req, { arrays: [{ name: "image", dtype: "uint8", shape: [1, 1, 3] }] }, [
      viewAt(new Uint8Array([10, 20, 30]), 1),
    ]);
    const reply = await p;
    expect(Array.from(reply.arrays.image.data)).toEqual([10, 20, 30]);
    expect(reply.meta.revision).toBe(4);
  });

  it("keeps one request at the kernel per purpose; the latest wins", async () => {
    const model = new FakeModel();
    const r = new Requester(model, { revision: () => 0 });
    const a = settled(r.request("layer", { layer: "a" }, { purpose: "layer" }));
    const b = settled(r.request("layer", { layer: "b" }, { purpose: "layer" }));
    const c = settled(r.request("layer", { layer: "c" }, { purpose: "layer" }));
    // Only "a" went out; "b" was replaced by "c" before it was ever sent.
    expect(model.sent.map((m) => m.layer)).toEqual(["a"]);
    expect(((await a).error as RequestDropped).reason).toBe("superseded");
    expect(((await b).error as RequestDropped).reason).toBe("superseded");
    model.reply(model.sent[0]);
    expect(model.sent.map((m) => m.layer)).toEqual(["a", "c"]);
    model.reply(model.sent[1], { meta: { revision: 0, layer: "c" } });
    expect(((await c).value as Reply).meta.layer).toBe("c");
  });

  it("lets different purposes run side by side", () => {
    const model = new FakeModel();
    const r = new Requester(model, { revision: () => 0 });
    void settled(r.request("layer", { layer: "a" }, { purpose: "layer" }));
    void settled(r.request("layer", { layer: "b" }, { purpose: "prefetch" }));
    expect(model.sent.map((m) => m.layer)).toEqual(["a", "b"]);
  });

  it("drops a reply computed for an older revision", async () => {
    const model = new FakeModel();
    let revision = 1;
    const r = new Requester(model, { revision: () => revision });
    const p = settled(r.request("layer", { layer: "a" }));
    revision = 2;
    model.reply(model.sent[0], { meta: { revision: 1 } });
    const { error } = await p;
    expect(isDropped(error)).toBe(true);
    expect((error as RequestDropped).reason).toBe("stale");
  });

  it("drops a reply whose meta names another revision than the one requested", async () => {
    const model = new FakeModel();
    const r = new Requester(model, { revision: () => 3 });
    const p = settled(r.request("layer", { layer: "a" }));
    model.reply(model.sent[0], { meta: { revision: 2 } });
    expect(((await p).error as RequestDropped).reason).toBe("stale");
  });

  it("rejects at once on abort, and frees the purpose only when the kernel's reply arrives", async () => {
    const model = new FakeModel();
    const r = new Requester(model, { revision: () => 0 });
    const ctl = new AbortController();
    const p = settled(r.request("channel", { channel: 1 }, { purpose: "detail", signal: ctl.signal }));
    ctl.abort();
    expect(((await p).error as RequestDropped).reason).toBe("aborted");
    const q = settled(r.request("channel", { channel: 2 }, { purpose: "detail" }));
    expect(model.sent).toHaveLength(1);
    model.reply(model.sent[0]);
    expect(model.sent.map((m) => m.channel)).toEqual([1, 2]);
    model.reply(model.sent[1]);
    expect((await q).value).toBeDefined();
  });

  it("never sends a queued request that was aborted", async () => {
    const model = new FakeModel();
    const r = new Requester(model, { revision: () => 0 });
    void settled(r.request("layer", { layer: "a" }, { purpose: "layer" }));
    const ctl = new AbortController();
    const b = settled(r.request("layer", { layer: "b" }, { purpose: "layer", signal: ctl.signal }));
    ctl.abort();
    expect(((await b).error as RequestDropped).reason).toBe("aborted");
    model.reply(model.sent[0]);
    expect(model.sent).toHaveLength(1);
  });

  it("rejects with the kernel's error text", async () => {
    const model = new FakeModel();
    const r = new Requester(model, { revision: () => 0 });
    const p = settled(r.request("layer", { layer: "nope" }));
    model.reply(model.sent[0], { ok: false, error: 'unknown layer "nope"', meta: undefined });
    const { error } = await p;
    expect(error).toBeInstanceOf(RequestError);
    expect((error as Error).message).toBe('unknown layer "nope"');
  });

  it("turns a reply whose buffers do not match its arrays into an error, not a crash", async () => {
    const model = new FakeModel();
    const r = new Requester(model, { revision: () => 0 });
    const p = settled(r.request("channel", {}));
    model.reply(model.sent[0], { arrays: [{ name: "values", dtype: "float32", shape: [4] }] }, [
      viewAt(new Uint8Array(4), 0),
    ]);
    expect(((await p).error as Error).message).toMatch(/malformed channel reply: .*needs 16 bytes/);
  });

  it("ignores replies it did not ask for (another view's ids) and other messages", async () => {
    const model = new FakeModel();
    const r = new Requester(model, { revision: () => 0 });
    const p = r.request("input", {});
    const req = model.sent[0];
    model.reply({ ...req, id: (req.id as number) + 1000 });
    model.reply({ ...req, kind: "layer" });
    for (const h of model.handlers) h({ type: "something-else" }, []);
    for (const h of model.handlers) h(null, []);
    model.reply(req, { meta: { revision: 0, tag: "mine" } });
    expect((await p).meta.tag).toBe("mine");
  });

  it("reports a slow reply as kernel busy, and not busy once it arrives", () => {
    vi.useFakeTimers();
    const model = new FakeModel();
    const busy: boolean[] = [];
    const r = new Requester(model, { revision: () => 0, onBusy: (b) => busy.push(b), busyDelayMs: 1500 });
    void settled(r.request("layer", {}, { purpose: "layer" }));
    vi.advanceTimersByTime(1499);
    expect(busy).toEqual([]);
    vi.advanceTimersByTime(2);
    expect(busy).toEqual([true]);
    expect(r.isBusy).toBe(true);
    model.reply(model.sent[0]);
    expect(busy).toEqual([true, false]);
  });

  it("removes its listener and drops pending requests on dispose", async () => {
    const model = new FakeModel();
    const r = new Requester(model, { revision: () => 0 });
    expect(model.handlers).toHaveLength(1);
    const p = settled(r.request("layer", {}, { purpose: "layer" }));
    r.dispose();
    expect(model.handlers).toHaveLength(0);
    expect(((await p).error as RequestDropped).reason).toBe("disposed");
    expect(((await settled(r.request("input", {}))).error as RequestDropped).reason).toBe("disposed");
  });
});

describe("toLayerData", () => {
  const meta = layerMeta("conv1", { shape: [1, 2, 4, 4], min: -1, max: 3, filter: true });

  function layerReply(stored: number[], values: number): Reply {
    const [c] = stored;
    return {
      id: 1,
      kind: "layer",
      meta: { layer: "conv1", revision: 0, sample: 0, shape: [2, 4, 4], stored, downsample: 2, channels: null },
      arrays: {
        values: { name: "values", dtype: "uint8", shape: stored, data: new Uint8Array(values) },
        stats: { name: "stats", dtype: "float32", shape: [c, 6], data: new Float32Array(c * 6) },
        flags: { name: "flags", dtype: "uint8", shape: [c], data: new Uint8Array(c) },
      },
    };
  }

  it("carries stored and full sizes, the downsample factor and the batch range", () => {
    const data = toLayerData(layerReply([2, 2, 2], 8), meta);
    expect(data).toMatchObject({ layer: "conv1", channels: 2, height: 2, width: 2, fullHeight: 4, fullWidth: 4 });
    expect(data.downsample).toBe(2);
    expect([data.layerMin, data.layerMax]).toEqual([-1, 3]);
  });

  it("names the array whose length does not match meta.stored", () => {
    expect(() => toLayerData(layerReply([2, 2, 2], 7), meta)).toThrow(
      /array "values" is uint8 \[2, 2, 2\]; expected 8 values/,
    );
  });
});

describe("layer replies of a scanned layer", () => {
  const f32 = (name: string, values: number[]) => ({
    name,
    dtype: "float32" as const,
    shape: [values.length],
    data: Float32Array.from(values),
  });

  function scanned(meta: Record<string, unknown>, extra: ReturnType<typeof f32>[]): Reply {
    return {
      id: 1,
      kind: "layer",
      meta: { layer: "relu", shape: [2, 1, 1], stored: [2, 1, 1], downsample: 1, channels: null, scan: meta },
      arrays: {
        values: { name: "values", dtype: "uint8", shape: [2, 1, 1], data: new Uint8Array(2) },
        stats: f32("stats", [0, 1, 0.5, 0, 0, 0, -2, 4, 1, 0.25, 0, 0]),
        flags: { name: "flags", dtype: "uint8", shape: [2], data: Uint8Array.from([1 | 8, 0]) },
        scan_mean: f32("scan_mean", [0, 1.5]),
        scan_max: f32("scan_max", [0, 9.12]),
        scan_active: f32("scan_active", [0, 0.75]),
        ...Object.fromEntries(extra.map((a) => [a.name, a])),
      },
    };
  }

  it("carries the dataset statistics per channel, and selectivity and d only when asked", () => {
    const plain = toLayerData(scanned({ images: 1000, dead: 1, label: null, pair: [] }, [])).scan!;
    expect(plain).toMatchObject({ images: 1000, dead: 1, label: null, pair: [], selectivity: null, effect: null });
    expect(Array.from(plain.max)).toEqual([0, Math.fround(9.12)]);
    expect(Array.from(plain.active)).toEqual([0, 0.75]);
    const meta = { images: 30, dead: 0, label: "2", pair: ["0", "1"], counts: { 0: 10, 1: 10 }, examples: {} };
    const full = toLayerData(scanned(meta, [f32("scan_selectivity", [0.5, -1]), f32("scan_effect", [2, 0])])).scan!;
    expect(Array.from(full.selectivity!)).toEqual([0.5, -1]);
    expect(Array.from(full.effect!)).toEqual([2, 0]);
    expect(full.counts).toEqual({ 0: 10, 1: 10 });
  });

  it("has no scan part for a layer the scan does not cover, and refuses a short array", () => {
    const reply = scanned({ images: 1, dead: 0, label: null, pair: [] }, []);
    delete reply.meta.scan;
    expect(toLayerData(reply).scan).toBeNull();
    const short = scanned({ images: 1, dead: 0, label: null, pair: [] }, [f32("scan_mean", [1])]);
    expect(() => toLayerData(short)).toThrow(/array "scan_mean" is float32 \[1\]; expected 2 values/);
  });

  it("reads stats by name in STATS_FIELDS order (python's wire.STATS_FIELDS)", () => {
    expect(STATS_FIELDS).toEqual(["min", "max", "mean", "zeros", "nan", "inf"]);
    const stats = toLayerData(scanned({ images: 1, dead: 0, label: null, pair: [] }, [])).stats;
    expect([statOf(stats, 1, "min"), statOf(stats, 1, "max"), statOf(stats, 1, "zeros")]).toEqual([-2, 4, 0.25]);
  });
});

describe("decodeExamples", () => {
  const entry = (index: number, offset: number, shape: number[]) => ({
    index,
    value: 9.12,
    row: 1,
    col: 2,
    label: "7",
    box: [0, 0, shape[0], shape[1]],
    peak: [1, 1],
    shape,
    offset,
  });

  it("splits pixels into one crop per example by offset and shape, without copying", () => {
    // Two crops: 2×2 then 1×3, after a 3-byte gap the decoder must not read.
    const pixels = new Uint8Array(3 + 12 + 9).map((_, i) => i);
    const reply: Reply = {
      id: 1,
      kind: "examples",
      meta: { layer: "conv2", channel: 3, crops: true, examples: [entry(40, 3, [2, 2]), entry(5, 15, [1, 3])] },
      arrays: { pixels: { name: "pixels", dtype: "uint8", shape: [24], data: pixels } },
    };
    const out = decodeExamples(reply, { layer: "conv2", channel: 3 });
    expect(out).toMatchObject({ layer: "conv2", channel: 3, crops: true, note: "" });
    const [a, b] = out.examples;
    expect(a).toMatchObject({ index: 40, value: 9.12, label: "7", box: [0, 0, 2, 2], peak: [1, 1] });
    expect(a.crop).toMatchObject({ height: 2, width: 2 });
    expect(Array.from(a.crop!.pixels)).toEqual(Array.from({ length: 12 }, (_, i) => 3 + i));
    expect(a.crop!.pixels.buffer).toBe(pixels.buffer);
    expect(b.crop).toMatchObject({ height: 1, width: 3 });
    expect(Array.from(b.crop!.pixels)).toEqual(Array.from({ length: 9 }, (_, i) => 15 + i));
  });

  it("lists the examples with the note and no crops when meta.crops is false", () => {
    const reply: Reply = {
      id: 1,
      kind: "examples",
      meta: {
        crops: false,
        note: "no crops: pass dataset= to the widget",
        examples: [{ index: 2, value: 1, row: 0, col: 0, label: null }],
      },
      arrays: {},
    };
    const out = decodeExamples(reply, { layer: "conv1", channel: 0 });
    expect(out).toMatchObject({ layer: "conv1", crops: false, note: "no crops: pass dataset= to the widget" });
    expect(out.examples[0]).toMatchObject({ index: 2, label: null, crop: null, box: null });
  });

  it("refuses a crop that lies outside pixels", () => {
    const reply: Reply = {
      id: 1,
      kind: "examples",
      meta: { crops: true, examples: [entry(1, 10, [2, 2])] },
      arrays: { pixels: { name: "pixels", dtype: "uint8", shape: [12], data: new Uint8Array(12) } },
    };
    expect(() => decodeExamples(reply, { layer: "c", channel: 0 })).toThrow(
      /crop 0 \(offset 10, 2 × 2 × 3\) lies outside pixels \(12\)/,
    );
  });

  it("resolves a use_example whose reply arrives after the new revision (the success it announces)", async () => {
    const { KernelSource } = await import("./source");
    const comm = new FakeComm();
    let revision = 4;
    const store = { get: (k: string) => (k === "revision" ? revision : null), update: () => {} } as never;
    const source = new KernelSource(comm as never, store);
    const done = source.useExample(17);
    const sent = comm.sent[0];
    expect(sent).toMatchObject({ kind: "use_example", index: 17, revision: 4 });
    revision = 5;
    comm.deliver({ type: "reply", v: 1, id: sent.id, kind: "use_example", ok: true, meta: { index: 17 } });
    await expect(done).resolves.toEqual({ index: 17 });
    source.destroy();
  });
});

describe("decodePictures", () => {
  const entry = (index: number, offset: number, shape: number[], label: unknown = "cat") => ({
    index,
    label,
    shape,
    offset,
  });
  const reply = (pictures: unknown, pixels: Uint8Array | null): Reply => ({
    id: 1,
    kind: "pictures",
    meta: { pictures },
    arrays: pixels === null ? {} : { pixels: { name: "pixels", dtype: "uint8", shape: [pixels.length], data: pixels } },
  });

  it("splits pixels into one picture per entry by offset and shape, in order, without copying", () => {
    const pixels = new Uint8Array(12 + 6).map((_, i) => i);
    const out = decodePictures(reply([entry(40, 0, [2, 2]), entry(5, 12, [1, 2], null)], pixels), {
      indices: [40, 5],
    });
    expect(out.map((p) => [p.index, p.label, p.picture.height, p.picture.width])).toEqual([
      [40, "cat", 2, 2],
      [5, null, 1, 2],
    ]);
    expect(Array.from(out[1].picture.pixels)).toEqual([12, 13, 14, 15, 16, 17]);
    expect(out[0].picture.pixels.buffer).toBe(pixels.buffer);
  });

  it("refuses a picture outside pixels, a missing pixels array and a malformed list", () => {
    expect(() => decodePictures(reply([entry(1, 6, [2, 2])], new Uint8Array(12)), { indices: [1] })).toThrow(
      /picture 0 \(offset 6, 2 × 2 × 3\) lies outside pixels \(12\)/,
    );
    expect(() => decodePictures(reply([entry(1, 0, [1, 1])], null), { indices: [1] })).toThrow(/no uint8 "pixels"/);
    expect(() => decodePictures(reply(null, new Uint8Array(3)), { indices: [1] })).toThrow(/meta.pictures is null/);
    expect(() => decodePictures(reply([{ label: "x" }], new Uint8Array(3)), { indices: [1] })).toThrow(
      /meta.pictures\[0\]/,
    );
  });

  it("is asked once per indices and scan by the kernel source (latest wins), and re-asked for a new scan", async () => {
    const { KernelSource } = await import("./source");
    const comm = new FakeComm();
    let scan = { images: 10 };
    const store = {
      get: (k: string) => (k === "revision" ? 3 : k === "scan_info" ? scan : null),
      update: () => {},
    } as never;
    const source = new KernelSource(comm as never, store);
    const deliver = (id: number) =>
      comm.deliver(
        {
          type: "reply",
          v: 1,
          id,
          kind: "pictures",
          ok: true,
          meta: { pictures: [{ index: 2, label: "a", shape: [1, 1], offset: 0 }] },
          arrays: [{ name: "pixels", dtype: "uint8", shape: [3] }],
        },
        [new DataView(new Uint8Array([1, 2, 3]).buffer)],
      );
    const old = source.pictures([7]);
    const first = source.pictures([2]);
    expect(comm.sent.map((m) => [m.kind, m.indices])).toEqual([["pictures", [7]]]);
    await expect(old).rejects.toMatchObject({ reason: "superseded" });
    deliver(comm.sent[0].id as number);
    expect(comm.sent.map((m) => m.indices)).toEqual([[7], [2]]);
    deliver(comm.sent[1].id as number);
    expect((await first)[0]).toMatchObject({ index: 2, label: "a" });
    await source.pictures([2]);
    expect(comm.sent.length).toBe(2);
    scan = { images: 10 };
    const again = source.pictures([2]);
    expect(comm.sent.length).toBe(3);
    deliver(comm.sent[2].id as number);
    await again;
    source.destroy();
  });
});
