import { describe, expect, it } from "vitest";
import { LayerLoader, LruCache, layerKey } from "./cache";
import { type LayerMeta, Requester } from "./protocol";
import { FakeComm } from "./testing/fake-comm";
import { layerMeta } from "./testing/fixtures";

describe("LruCache", () => {
  const sized = (): LruCache<Uint8Array> => new LruCache<Uint8Array>(100, (v) => v.byteLength);

  it("evicts the least recently used entries to stay within its byte budget", () => {
    const cache = sized();
    cache.set("a", new Uint8Array(40));
    cache.set("b", new Uint8Array(40));
    cache.get("a"); // "b" is now the oldest
    cache.set("c", new Uint8Array(40));
    expect(cache.has("a")).toBe(true);
    expect(cache.has("b")).toBe(false);
    expect(cache.has("c")).toBe(true);
    expect(cache.bytes).toBe(80);
  });

  it("replaces an entry's size when a key is set again", () => {
    const cache = sized();
    cache.set("a", new Uint8Array(90));
    cache.set("a", new Uint8Array(10));
    cache.set("b", new Uint8Array(80));
    expect(cache.bytes).toBe(90);
    expect(cache.size).toBe(2);
  });

  it("does not keep an entry larger than the whole budget", () => {
    const cache = sized();
    cache.set("small", new Uint8Array(10));
    cache.set("huge", new Uint8Array(101));
    expect(cache.has("huge")).toBe(false);
    expect(cache.has("small")).toBe(true);
  });

  it("clears to zero bytes", () => {
    const cache = sized();
    cache.set("a", new Uint8Array(10));
    cache.clear();
    expect([cache.size, cache.bytes]).toEqual([0, 0]);
  });
});

describe("layerKey", () => {
  it("differs by revision, sample and layer, whatever characters a layer name holds", () => {
    const base = { revision: 1, sample: 0, layer: "layer1.0/conv" };
    expect(layerKey(base)).not.toBe(layerKey({ ...base, revision: 2 }));
    expect(layerKey(base)).not.toBe(layerKey({ ...base, sample: 1 }));
    expect(layerKey({ revision: 1, sample: 10, layer: "x" })).not.toBe(
      layerKey({ revision: 11, sample: 0, layer: "x" }),
    );
  });
});

/** A kernel stand-in that answers `layer` requests when the test says so. */
class FakeKernel extends FakeComm {
  /** Answers the i-th request sent with a 2-channel 2×2 layer. */
  answer(i: number): void {
    const req = this.sent[i];
    const msg = {
      type: "reply",
      v: 1,
      id: req.id,
      kind: "layer",
      ok: true,
      meta: {
        layer: req.layer,
        sample: req.sample,
        revision: req.revision,
        shape: [2, 2, 2],
        stored: [2, 2, 2],
        downsample: 1,
        channels: null,
      },
      arrays: [
        { name: "values", dtype: "uint8", shape: [2, 2, 2] },
        { name: "stats", dtype: "float32", shape: [2, 6] },
        { name: "flags", dtype: "uint8", shape: [2] },
      ],
    };
    const buffers = [
      new DataView(new ArrayBuffer(8)),
      new DataView(new ArrayBuffer(48)),
      new DataView(new ArrayBuffer(2)),
    ];
    this.deliver(msg, buffers);
  }
}

function meta(name: string): LayerMeta {
  return layerMeta(name);
}

function setup(revision = 0): { kernel: FakeKernel; loader: LayerLoader } {
  const kernel = new FakeKernel();
  const requester = new Requester(kernel, { revision: () => revision });
  const names = new Set(["a", "b", "c", "d"]);
  const loader = new LayerLoader({ requester, metaOf: (n) => (names.has(n) ? meta(n) : undefined) });
  return { kernel, loader };
}

describe("LayerLoader", () => {
  it("caches a loaded layer under its revision, layer and sample", async () => {
    const { kernel, loader } = setup();
    const p = loader.load({ revision: 0, layer: "a", sample: 0 });
    kernel.answer(0);
    const data = await p;
    expect(data.layer).toBe("a");
    expect(loader.peek({ revision: 0, layer: "a", sample: 0 })).toBe(data);
    expect(loader.peek({ revision: 1, layer: "a", sample: 0 })).toBeUndefined();
    expect(loader.peek({ revision: 0, layer: "a", sample: 1 })).toBeUndefined();
    expect(await loader.load({ revision: 0, layer: "a", sample: 0 })).toBe(data);
    expect(kernel.sent).toHaveLength(1);
  });

  it("prefetches neighbours one at a time, only after the shown layer arrived", async () => {
    const { kernel, loader } = setup();
    const shown = loader.load({ revision: 0, layer: "a", sample: 0 });
    loader.prefetch(["b", "c"], 0, 0);
    expect(kernel.sent.map((m) => m.layer)).toEqual(["a"]);
    kernel.answer(0);
    await shown;
    await Promise.resolve();
    expect(kernel.sent.map((m) => m.layer)).toEqual(["a", "b"]);
    kernel.answer(1);
    await new Promise((r) => setTimeout(r, 0));
    expect(kernel.sent.map((m) => m.layer)).toEqual(["a", "b", "c"]);
    expect(loader.peek({ revision: 0, layer: "b", sample: 0 })).toBeDefined();
  });

  it("joins a prefetch already at the kernel instead of asking twice", async () => {
    const { kernel, loader } = setup();
    loader.prefetch(["b"], 0, 0);
    expect(kernel.sent.map((m) => m.layer)).toEqual(["b"]);
    const p = loader.load({ revision: 0, layer: "b", sample: 0 });
    kernel.answer(0);
    expect((await p).layer).toBe("b");
    expect(kernel.sent).toHaveLength(1);
  });

  it("skips cached and unknown layers when prefetching, and forgets everything on clear", async () => {
    const { kernel, loader } = setup();
    const p = loader.load({ revision: 0, layer: "a", sample: 0 });
    kernel.answer(0);
    await p;
    await Promise.resolve();
    loader.prefetch(["a", "gone", "d"], 0, 0);
    expect(kernel.sent.map((m) => m.layer)).toEqual(["a", "d"]);
    loader.clear();
    expect(loader.peek({ revision: 0, layer: "a", sample: 0 })).toBeUndefined();
  });

  it("rejects a layer that is not captured, naming it", async () => {
    const { loader } = setup();
    await expect(loader.load({ revision: 0, layer: "zzz", sample: 0 })).rejects.toThrow(
      /layer "zzz" is not among the captured layers/,
    );
  });
});

describe("LayerLoader races", () => {
  it("asks again for a layer whose request a newer load replaced in the same task (A, B, A)", async () => {
    const { kernel, loader } = setup();
    const dropped = [
      loader.load({ revision: 0, layer: "a", sample: 0 }),
      loader.load({ revision: 0, layer: "b", sample: 0 }),
    ];
    const again = loader.load({ revision: 0, layer: "a", sample: 0 });
    for (const p of dropped) await expect(p).rejects.toThrow(/dropped/);
    // One request per purpose is at the kernel: the newest waits for the first one's (unused) reply.
    kernel.answer(0);
    await Promise.resolve();
    expect(kernel.sent.map((m) => m.layer)).toEqual(["a", "a"]);
    kernel.answer(1);
    expect((await again).layer).toBe("a");
  });

  it("neither joins nor caches a request sent before clear", async () => {
    const { kernel, loader } = setup();
    loader.prefetch(["b"], 0, 0);
    loader.clear();
    const fresh = loader.load({ revision: 0, layer: "b", sample: 0 });
    expect(kernel.sent.map((m) => m.layer)).toEqual(["b", "b"]);
    kernel.answer(0);
    await new Promise((r) => setTimeout(r, 0));
    expect(loader.peek({ revision: 0, layer: "b", sample: 0 })).toBeUndefined();
    kernel.answer(1);
    expect((await fresh).layer).toBe("b");
    expect(loader.peek({ revision: 0, layer: "b", sample: 0 })).toBe(await fresh);
  });
});
