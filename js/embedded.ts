/**
 * What a saved HTML file (`FeatureMapWidget.save_html`, docs/protocol.md "Saved HTML files") holds, served
 * to the view: `EmbeddedSource` answers the data source's calls from the kernel's recorded replies (decoded
 * by the same decoders as live ones), `LocalModel` stands in for the anywidget model with the saved traits.
 * Channel maps come from the 8-bit layer data, dequantized on each channel's range, and say so. What needs
 * the kernel (ablation, dataset examples and pictures, full resolution, Grad-CAM not computed before saving) is refused
 * with a sentence that says why.
 *
 * @example
 *   const file = readSavedFile(document);
 *   const model = new LocalModel(file.data.traits);
 *   mount(host, model, (store) => new EmbeddedSource(file, store));
 */
import type { LayerKey } from "./cache";
import {
  type AblateReply,
  type ChannelData,
  type DatasetPicture,
  type Decoded,
  decodeRecorded,
  type ExamplesResult,
  type Explanation,
  type GradcamResult,
  type InputPicture,
  type LayerMeta,
  type LoadedLayer,
  type RequestArgs,
  RequestError,
  type RequestKind,
  statOf,
  type Traits,
  withBatchRange,
} from "./protocol";
import type { DataSource } from "./source";
import type { StoreModel } from "./store";

/** The `format` this reader understands. */
export const SAVED_FORMAT = "fmwidget.html/1";

/** One kernel reply as the file keeps it: message content, and where each array starts in its blob. */
export interface RecordedReply {
  kind: RequestKind;
  /** What the reply answers: `{layer}` (layer), `{}` (input), `{layer, target, method}` (gradcam). */
  args: Record<string, unknown>;
  content: Record<string, unknown>;
  /** Index of the blob holding its arrays, one after another. */
  blob: number;
  offsets: number[];
}

/** The file's JSON block. */
export interface SavedData {
  format: string;
  traits: Partial<Traits>;
  /**
   * What was saved: the sample (its index in the widget's batch), layer counts, the input, CAM maps
   * and for how many channels the top dataset examples (older files: absent).
   */
  saved: {
    sample: number;
    num_samples: number;
    layers: number;
    of_layers: number;
    input: boolean;
    gradcam: number;
    examples?: number;
  };
  replies: RecordedReply[];
}

/** A saved file: its JSON block and its blobs (base64 text, decoded when first read). */
export interface SavedFile {
  data: SavedData;
  blob(index: number): Uint8Array;
}

/** Why kernel-only actions are refused in a saved file. */
export const OFFLINE = "this is a saved file, with no Python kernel behind it";

/**
 * Reads the JSON block (`#fmwidget-data`) and the blobs (`#fmwidget-blob-<i>`) of a saved file.
 *
 * @example
 *   const { data, blob } = readSavedFile(document);
 */
export function readSavedFile(doc: Document): SavedFile {
  const json = doc.getElementById("fmwidget-data")?.textContent;
  if (json == null) throw new Error("this page holds no fmwidget data (#fmwidget-data is missing)");
  const data = JSON.parse(json) as SavedData;
  if (data.format !== SAVED_FORMAT) {
    throw new Error(`the saved data is in format "${String(data.format)}"; this view reads "${SAVED_FORMAT}"`);
  }
  return {
    data,
    blob(index) {
      const text = doc.getElementById(`fmwidget-blob-${index}`)?.textContent;
      if (text == null) throw new Error(`the saved file lacks blob ${index}`);
      return base64Bytes(text.trim());
    },
  };
}

/** The bytes of base64 text. */
export function base64Bytes(text: string): Uint8Array {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

/** The data source of a saved file: every answer is a recorded reply, or made from one. */
export class EmbeddedSource implements DataSource {
  readonly live = false;
  private readonly file: SavedFile;
  private readonly metaOf: (name: string) => LayerMeta | undefined;
  private readonly layers = new Map<string, LoadedLayer>();
  private readonly cams = new Map<string, GradcamResult>();
  private picture: InputPicture | null = null;

  constructor(file: SavedFile, store: { metaOf(name: string): LayerMeta | undefined }) {
    this.file = file;
    this.metaOf = (name) => store.metaOf(name);
  }

  peekLayer(key: LayerKey): LoadedLayer | undefined {
    if (key.sample !== 0) return undefined;
    const hit = this.layers.get(key.layer);
    if (hit !== undefined) return hit;
    const recorded = this.find("layer", (args) => args.layer === key.layer);
    if (recorded === undefined) return undefined;
    const data = this.decode("layer", recorded, { layer: key.layer, sample: 0 });
    const meta = this.metaOf(key.layer);
    const layer = meta === undefined ? data : withBatchRange(data, meta);
    this.layers.set(key.layer, layer);
    return layer;
  }

  loadLayer(key: LayerKey): Promise<LoadedLayer> {
    try {
      const layer = this.peekLayer(key);
      if (layer !== undefined) return Promise.resolve(layer);
      return Promise.reject(new RequestError("layer", `layer "${key.layer}" is not saved in this file`));
    } catch (e) {
      return Promise.reject(e);
    }
  }

  prefetch(): void {
    // Everything is in the page already; layers are decoded when first shown.
  }

  clearLayers(): void {
    // The saved layers never change.
  }

  fullRes(layer: string): Promise<LoadedLayer> {
    const f = this.layers.get(layer)?.downsample ?? 1;
    return Promise.reject(
      new RequestError("layer", `the file holds this layer at 1/${f} resolution only (${OFFLINE})`),
    );
  }

  channel(args: RequestArgs["channel"]): Promise<ChannelData> {
    return this.loadLayer({ revision: 0, layer: args.layer, sample: args.sample }).then((layer) =>
      dequantizedChannel(layer, args.channel),
    );
  }

  input(): Promise<InputPicture> {
    if (this.picture === null) {
      const recorded = this.find("input", () => true);
      if (recorded === undefined) {
        return Promise.reject(new RequestError("input", "the input picture was not saved in this file"));
      }
      this.picture = this.decode("input", recorded, { sample: 0 });
    }
    return Promise.resolve(this.picture);
  }

  peekGradcam(key: string): GradcamResult | undefined {
    return this.cams.get(key);
  }

  gradcam(key: string, args: RequestArgs["gradcam"]): Promise<GradcamResult> {
    const hit = this.cams.get(key);
    if (hit !== undefined) return Promise.resolve(hit);
    const recorded = this.find(
      "gradcam",
      (a) => a.layer === args.layer && (a.target ?? null) === args.target && a.method === args.method,
    );
    if (recorded === undefined) {
      const which = args.target === null ? "the predicted class" : `class ${args.target}`;
      return Promise.reject(
        new RequestError(
          "gradcam",
          `${args.method} of ${args.layer} for ${which} was not computed before saving, and ${OFFLINE}; ` +
            "open the Grad-CAM panel on this layer in the notebook, then save again",
        ),
      );
    }
    try {
      const result = this.decode("gradcam", recorded, args);
      this.cams.set(key, result);
      return Promise.resolve(result);
    } catch (e) {
      return Promise.reject(e);
    }
  }

  clearGradcam(): void {
    this.cams.clear();
  }

  ablate(): Promise<AblateReply> {
    return Promise.reject(new RequestError("ablate", `ablation re-runs the model, and ${OFFLINE}`));
  }

  examples(layer: string, channel: number): Promise<ExamplesResult> {
    const recorded = this.find("examples", (a) => a.layer === layer && a.channel === channel);
    if (recorded === undefined) {
      const saved = this.file.data.saved.examples ?? 0;
      const which =
        saved > 0 ? `the file holds those of ${saved} channels of the layer shown when saving` : "none were saved";
      return Promise.reject(
        new RequestError("examples", `the top dataset examples of channel ${channel} were not saved (${which})`),
      );
    }
    try {
      return Promise.resolve(this.decode("examples", recorded, { layer, channel }));
    } catch (e) {
      return Promise.reject(e);
    }
  }

  useExample(): Promise<{ index: number }> {
    return Promise.reject(new RequestError("use_example", `a new input re-runs the model, and ${OFFLINE}`));
  }

  pictures(): Promise<DatasetPicture[]> {
    return Promise.reject(
      new RequestError("pictures", `pictures of dataset images come from the dataset, and ${OFFLINE}`),
    );
  }

  explain(): Promise<Explanation> {
    return Promise.reject(
      new RequestError("explain", `how a value is computed needs the model in the live kernel, and ${OFFLINE}`),
    );
  }

  destroy(): void {
    this.layers.clear();
    this.cams.clear();
    this.picture = null;
  }

  private find(kind: RequestKind, match: (args: Record<string, unknown>) => boolean): RecordedReply | undefined {
    return this.file.data.replies.find((r) => r.kind === kind && match(r.args));
  }

  private decode<K extends RequestKind>(kind: K, recorded: RecordedReply, args: RequestArgs[K]): Decoded[K] {
    const bytes = this.file.blob(recorded.blob);
    const specs = Array.isArray(recorded.content.arrays)
      ? (recorded.content.arrays as { shape: number[]; dtype: string }[])
      : [];
    const buffers = specs.map((spec, i) => {
      const size = spec.dtype === "uint8" ? 1 : 4;
      const length = spec.shape.reduce((a, b) => a * b, 1) * size;
      return new DataView(bytes.buffer, bytes.byteOffset + recorded.offsets[i], length);
    });
    return decodeRecorded(kind, recorded.content, buffers, args);
  }
}

/**
 * One channel of a loaded layer as float32 values, dequantized from its 8-bit data on the channel's own
 * range (`v = min + q / 254 · (max − min)`, 255 = NaN/Inf): within `quantized` / 2 of the true value.
 *
 * @example
 *   dequantizedChannel(layer, 3).values[0]; // min + q / 254 * (max - min)
 */
export function dequantizedChannel(layer: LoadedLayer, channel: number): ChannelData {
  if (!(channel >= 0 && channel < layer.channels)) {
    throw new RequestError("channel", `channel ${channel} is out of range: ${layer.layer} has ${layer.channels}`);
  }
  const n = layer.height * layer.width;
  const lo = statOf(layer.stats, channel, "min");
  const hi = statOf(layer.stats, channel, "max");
  const step = (hi - lo) / 254;
  const values = new Float32Array(n);
  const q = layer.values.subarray(channel * n, (channel + 1) * n);
  for (let i = 0; i < n; i++) values[i] = q[i] === 255 ? Number.NaN : lo + (q[i] / 254) * (hi - lo);
  return {
    layer: layer.layer,
    channel,
    height: layer.height,
    width: layer.width,
    values,
    filter: null,
    quantized: { step, downsample: layer.downsample },
  };
}

/** Traits only the kernel could change: a saved file snaps them back, as the kernel refuses a bad value. */
const FROZEN: readonly (keyof Traits)[] = [
  "layers",
  "num_samples",
  "sample",
  "revision",
  "status",
  "predictions",
  "groups",
  "group_pair",
  "cam_methods",
  "scan_info",
  "scan_label",
  "scan_pair",
];

/**
 * The anywidget model of a saved file: the saved traits, Backbone-like `change:<name>` and `change` events,
 * and the few rules the kernel applies when the view writes (a new layer clears the selection and closes
 * a channel it lacks; a trait only the kernel can change snaps back).
 *
 * @example
 *   const model = new LocalModel({ layer: "conv1", layers: [...] });
 *   model.on("change:layer", redraw);
 */
export class LocalModel implements StoreModel {
  private readonly values: Partial<Traits>;
  private readonly saved: Partial<Traits>;
  private readonly listeners = new Map<string, Set<() => void>>();
  private written = new Set<keyof Traits>();

  constructor(traits: Partial<Traits>) {
    this.values = { ...traits };
    this.saved = { ...traits };
  }

  get<K extends keyof Traits>(key: K): Traits[K] {
    return this.values[key] as Traits[K];
  }

  set<K extends keyof Traits>(key: K, value: Traits[K]): void {
    if (JSON.stringify(this.values[key]) === JSON.stringify(value)) return;
    this.values[key] = value;
    this.written.add(key);
    this.emit(`change:${key}`);
    this.emit("change");
  }

  /** The kernel's side of a save: its rules run on the keys written since the last one. */
  save_changes(): void {
    const written = this.written;
    this.written = new Set();
    const fixes: Partial<Traits> = {};
    for (const key of FROZEN) {
      if (written.has(key)) (fixes as Record<string, unknown>)[key] = this.saved[key];
    }
    if (written.has("layer") && !written.has("selected")) fixes.selected = [];
    const meta = this.values.layers?.find((l) => l.name === this.values.layer);
    const channel = this.values.channel;
    if (channel != null && (meta === undefined || channel >= meta.shape[1])) fixes.channel = null;
    if (Object.keys(fixes).length === 0) return;
    // Like the kernel's echo: a separate update, after the view's own.
    queueMicrotask(() => {
      for (const [key, value] of Object.entries(fixes) as [keyof Traits, never][]) this.set(key, value);
      this.written.clear();
    });
  }

  on(event: string, callback: () => void): void {
    let set = this.listeners.get(event);
    if (set === undefined) {
      set = new Set();
      this.listeners.set(event, set);
    }
    set.add(callback);
  }

  off(event: string, callback: () => void): void {
    this.listeners.get(event)?.delete(callback);
  }

  private emit(event: string): void {
    for (const fn of [...(this.listeners.get(event) ?? [])]) fn();
  }
}
