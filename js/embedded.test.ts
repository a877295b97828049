import { describe, expect, it } from "vitest";
import { EmbeddedSource, LocalModel, type RecordedReply, readSavedFile, type SavedFile } from "./embedded";
import { type LayerMeta, RequestError } from "./protocol";
import { layerMeta } from "./testing/fixtures";

/** Arrays laid out as save_html lays them out: one after another, each at a multiple of 4 bytes. */
function blobOf(arrays: ArrayBufferView[]): { bytes: Uint8Array; offsets: number[] } {
  const offsets: number[] = [];
  let size = 0;
  for (const a of arrays) {
    offsets.push(size);
    size += Math.ceil(a.byteLength / 4) * 4;
  }
  const bytes = new Uint8Array(size);
  arrays.forEach((a, i) => {
    bytes.set(new Uint8Array(a.buffer, a.byteOffset, a.byteLength), offsets[i]);
  });
  return { bytes, offsets };
}

// Two 2 × 3 channels: channel 0 on [-1, 1] with a NaN, channel 1 constant 5.
const values = Uint8Array.from([0, 127, 254, 255, 10, 20, 0, 0, 0, 0, 0, 0]);
const stats = Float32Array.from([-1, 1, 0, 0, 1, 0, 5, 5, 5, 0, 0, 0]);
const flags = Uint8Array.from([4, 2]);
const heatmap = Float32Array.from([0, 1, 2, 3]);
const weights = Float32Array.from([0.5, -0.5]);

function savedFile(): { file: SavedFile; reads: number[] } {
  const layer = blobOf([values, stats, flags]);
  const cam = blobOf([heatmap, weights]);
  const crop = blobOf([Uint8Array.from({ length: 12 }, (_, i) => 20 * i)]);
  const blobs = [layer.bytes, cam.bytes, crop.bytes];
  const replies: RecordedReply[] = [
    {
      kind: "layer",
      args: { layer: "conv1" },
      content: {
        type: "reply",
        v: 1,
        id: 1,
        kind: "layer",
        ok: true,
        meta: { layer: "conv1", sample: 3, shape: [2, 2, 3], stored: [2, 2, 3], downsample: 1, channels: null },
        arrays: [
          { name: "values", dtype: "uint8", shape: [2, 2, 3] },
          { name: "stats", dtype: "float32", shape: [2, 6] },
          { name: "flags", dtype: "uint8", shape: [2] },
        ],
      },
      blob: 0,
      offsets: layer.offsets,
    },
    {
      kind: "gradcam",
      args: { layer: "conv1", target: null, method: "gradcam" },
      content: {
        type: "reply",
        v: 1,
        id: 2,
        kind: "gradcam",
        ok: true,
        meta: {
          layer: "conv1",
          sample: 3,
          target: 7,
          label: "cat",
          method: "gradcam",
          normalized: false,
          shape: [2, 2],
        },
        arrays: [
          { name: "heatmap", dtype: "float32", shape: [2, 2] },
          { name: "weights", dtype: "float32", shape: [2] },
        ],
      },
      blob: 1,
      offsets: cam.offsets,
    },
    {
      kind: "examples",
      args: { layer: "conv1", channel: 0 },
      content: {
        type: "reply",
        v: 1,
        id: 3,
        kind: "examples",
        ok: true,
        meta: {
          layer: "conv1",
          channel: 0,
          crops: true,
          examples: [
            {
              index: 41,
              value: 2.5,
              row: 1,
              col: 2,
              label: "7",
              box: [0, 1, 2, 3],
              peak: [1, 1],
              shape: [2, 2],
              offset: 0,
            },
          ],
        },
        arrays: [{ name: "pixels", dtype: "uint8", shape: [12] }],
      },
      blob: 2,
      offsets: crop.offsets,
    },
  ];
  const reads: number[] = [];
  const data = {
    format: "fmwidget.html/1",
    traits: {},
    saved: { sample: 3, num_samples: 4, layers: 1, of_layers: 9, input: false, gradcam: 1, examples: 1 },
    replies,
  };
  return {
    file: {
      data,
      blob(i) {
        reads.push(i);
        return blobs[i];
      },
    },
    reads,
  };
}

const metas: LayerMeta[] = [layerMeta("conv1", { shape: [1, 2, 2, 3], min: -2, max: 6 })];
const store = { metaOf: (name: string) => metas.find((m) => m.name === name) };
const key = { revision: 1, layer: "conv1", sample: 0 };

describe("EmbeddedSource", () => {
  it("serves a saved layer through the reply decoders, with the batch range, decoding it once", async () => {
    const { file, reads } = savedFile();
    const source = new EmbeddedSource(file, store);
    const layer = await source.loadLayer(key);
    expect(Array.from(layer.values)).toEqual(Array.from(values));
    expect(layer.channels).toBe(2);
    expect([layer.height, layer.width]).toEqual([2, 3]);
    expect([layer.layerMin, layer.layerMax]).toEqual([-2, 6]);
    expect(source.peekLayer(key)).toBe(layer);
    expect(reads).toEqual([0]);
  });

  it("refuses a layer that was not saved, and full resolution, with a reason", async () => {
    const source = new EmbeddedSource(savedFile().file, store);
    await expect(source.loadLayer({ ...key, layer: "fc" })).rejects.toThrow(/not saved in this file/);
    expect(source.peekLayer({ ...key, layer: "fc" })).toBeUndefined();
    await expect(source.fullRes("conv1")).rejects.toThrow(/resolution only/);
  });

  it("dequantizes a channel from the 8-bit data and says how close it is", async () => {
    const source = new EmbeddedSource(savedFile().file, store);
    const map = await source.channel({ layer: "conv1", sample: 0, channel: 0 });
    expect([map.height, map.width]).toEqual([2, 3]);
    expect(map.values[0]).toBe(-1);
    expect(map.values[1]).toBe(Math.fround(-1 + (127 / 254) * 2));
    expect(map.values[2]).toBe(1);
    expect(map.values[3]).toBeNaN();
    expect(map.quantized).toEqual({ step: 2 / 254, downsample: 1 });
    expect(map.filter).toBeNull();
    const constant = await source.channel({ layer: "conv1", sample: 0, channel: 1 });
    expect(Array.from(constant.values)).toEqual([5, 5, 5, 5, 5, 5]);
    await expect(source.channel({ layer: "conv1", sample: 0, channel: 2 })).rejects.toThrow(/out of range/);
  });

  it("serves the Grad-CAM maps computed before saving, and refuses others with what to do", async () => {
    const source = new EmbeddedSource(savedFile().file, store);
    const args = { layer: "conv1", sample: 0, target: null, method: "gradcam" };
    const cam = await source.gradcam("k", args);
    expect(cam.target).toBe(7);
    expect(cam.label).toBe("cat");
    expect(Array.from(cam.heatmap)).toEqual([0, 1, 2, 3]);
    expect(source.peekGradcam("k")).toBe(cam);
    const other = source.gradcam("k2", { ...args, target: 3 });
    await expect(other).rejects.toBeInstanceOf(RequestError);
    await expect(other).rejects.toThrow(/class 3 was not computed before saving.*save again/);
  });

  it("serves the top dataset examples saved with the file, and says which were not saved", async () => {
    const source = new EmbeddedSource(savedFile().file, store);
    const result = await source.examples("conv1", 0);
    expect(result.crops).toBe(true);
    expect(result.examples.map((e) => [e.index, e.value, e.label])).toEqual([[41, 2.5, "7"]]);
    expect(result.examples[0].crop?.pixels.length).toBe(12);
    expect(result.examples[0].crop?.pixels[11]).toBe(220);
    await expect(source.examples("conv1", 1)).rejects.toThrow(/channel 1 were not saved .*1 channels/);
  });

  it("refuses what needs the kernel", async () => {
    const source = new EmbeddedSource(savedFile().file, store);
    await expect(source.ablate()).rejects.toThrow(/no Python kernel/);
    await expect(source.useExample()).rejects.toThrow(/no Python kernel/);
    await expect(source.pictures()).rejects.toThrow(/pictures of dataset images .*no Python kernel/);
    await expect(source.input()).rejects.toThrow(/input picture was not saved/);
  });
});

describe("readSavedFile", () => {
  it("reads the JSON block and base64 blobs of a page", () => {
    const doc = document.implementation.createHTMLDocument("saved");
    const json = doc.createElement("script");
    json.type = "application/json";
    json.id = "fmwidget-data";
    json.textContent = '{"format":"fmwidget.html/1","traits":{"layer":"\\u003c/script\\u003e"},"replies":[]}';
    const blob = doc.createElement("script");
    blob.type = "application/octet-stream";
    blob.id = "fmwidget-blob-0";
    blob.textContent = btoa(String.fromCharCode(0, 1, 254, 255));
    doc.body.append(json, blob);
    const file = readSavedFile(doc);
    expect(file.data.traits.layer).toBe("</script>");
    expect(Array.from(file.blob(0))).toEqual([0, 1, 254, 255]);
    expect(() => file.blob(1)).toThrow(/lacks blob 1/);
  });

  it("refuses another format", () => {
    const doc = document.implementation.createHTMLDocument("saved");
    doc.body.innerHTML = '<script type="application/json" id="fmwidget-data">{"format":"other"}</script>';
    expect(() => readSavedFile(doc)).toThrow(/format "other"/);
  });
});

describe("LocalModel", () => {
  const traits = {
    layers: [layerMeta("a", { shape: [1, 8, 4, 4] }), layerMeta("b", { shape: [1, 2, 4, 4] })],
    layer: "a",
    channel: 5,
    selected: [1, 2],
    scan_label: null,
  };

  it("fires change events as Backbone does, and only for new values", () => {
    const model = new LocalModel(traits);
    const events: string[] = [];
    model.on("change:colormap", () => events.push("change:colormap"));
    model.on("change", () => events.push("change"));
    model.set("colormap", "magma");
    model.set("colormap", "magma");
    expect(events).toEqual(["change:colormap", "change"]);
    expect(model.get("colormap")).toBe("magma");
  });

  it("applies the kernel's rules on save: a new layer clears the selection and a channel it lacks", async () => {
    const model = new LocalModel(traits);
    model.set("layer", "b");
    model.save_changes();
    await Promise.resolve();
    expect(model.get("selected")).toEqual([]);
    expect(model.get("channel")).toBeNull();
  });

  it("snaps back a trait only the kernel could change", async () => {
    const model = new LocalModel(traits);
    let changes = 0;
    model.on("change:scan_label", () => changes++);
    model.set("scan_label", "dog");
    model.save_changes();
    await Promise.resolve();
    expect(model.get("scan_label")).toBeNull();
    expect(changes).toBe(2);
  });
});
