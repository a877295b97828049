/**
 * The browser side of the wire contract (docs/protocol.md): trait types, the array codec for reply
 * buffers, one decoder per reply kind, and the request client that keeps at most one request in flight
 * per purpose. Views get decoded replies from `ask` and never read `reply.meta` themselves.
 *
 * @example
 *   const requester = new Requester(model, { revision: () => store.get("revision") });
 *   const data = await requester.ask("layer", { layer: "conv1", sample: 0 }, { purpose: "layer" });
 *   grid.setLayer(withBatchRange(data, metaOf("conv1"))); // a LoadedLayer
 */
import type { ColormapName } from "./colormaps";
import type { LayerData, ViewState } from "./grid/grid";
import type { Scope } from "./scale";

/** Version of the reply envelope this client understands (`v` in every reply). */
export const PROTOCOL_VERSION = 1;

/** One captured layer, as the kernel lists it in the `layers` trait. */
export interface LayerMeta {
  name: string;
  module: string;
  call: number;
  type: string;
  shape: [number, number, number, number];
  dtype: string;
  min: number;
  max: number;
  dead: number;
  constant: number;
  nonfinite: number;
  kind: "conv" | "norm" | "act" | "pool" | "linear" | "block" | "other";
  pre: string | null;
  post: string | null;
  filter: boolean;
  /** Blocks (containers) whose output is this very tensor, e.g. ["layer4"]; absent in older saved files. */
  aliases?: string[];
  /**
   * What the module computed: "nchw"; "nhwc" (a channels-last tensor, shown permuted); "tokens" (a transformer
   * block's (N, extra_tokens + H·W, C) output, shown as the maps of its patch tokens); "ncthw" / "nthwc" (a
   * video layer's (N, C, T, H, W) or channels-last (N, T, H, W, C) output, shown one frame at a time).
   * Absent: "nchw".
   */
  layout?: "nchw" | "nhwc" | "tokens" | "ncthw" | "nthwc";
  extra_tokens?: number;
  /** A video layer's frames (T) and the one shown (the one covering the input frame `frame`); 0 for images. */
  frames?: number;
  frame?: number;
}

/** One entry of a sample's top-5 in the `predictions` trait (`label` is null when the model has no class names). */
export interface Prediction {
  index: number;
  label: string | null;
  /** Softmax probability; null when the output was not finite (NaN inputs). */
  prob: number | null;
}

export type SortKey =
  | "index"
  | "mean"
  | "max"
  | "zeros"
  | "gradcam"
  | "effect"
  | "dataset_mean"
  | "dataset_max"
  | "dataset_active"
  | "selectivity"
  | "dataset_effect";

/**
 * The columns of a `layer` reply's `stats` rows, in order (python: `fmwidget/wire.py` STATS_FIELDS).
 * Read them with {@link statOf}, never with a hand-written offset.
 */
export const STATS_FIELDS = ["min", "max", "mean", "zeros", "nan", "inf"] as const;
export type StatField = (typeof STATS_FIELDS)[number];
/** Numbers per channel in `stats`. */
export const STATS_WIDTH = STATS_FIELDS.length;
const STAT_INDEX = Object.fromEntries(STATS_FIELDS.map((f, i) => [f, i])) as Record<StatField, number>;

/**
 * One statistic of channel `c` from a `stats` array (channels × STATS_WIDTH).
 *
 * @example
 *   statOf(data.stats, 3, "max"); // the max of channel 3 over this sample's map
 */
export function statOf(stats: Float32Array, c: number, field: StatField): number {
  return stats[STATS_WIDTH * c + STAT_INDEX[field]];
}

/** Channel flag bits of a `layer` reply (docs/protocol.md). */
export const FLAG_DEAD = 1;
export const FLAG_CONSTANT = 2;
export const FLAG_NONFINITE = 4;
/** Never > 0 on any image of the widget's dataset scan (FLAG_DEAD is about the batch only). */
export const FLAG_DATASET_DEAD = 8;

/** The `scan_info` trait: the widget's dataset scan. */
export interface ScanInfo {
  /** Images the scan covers. */
  images: number;
  /** Examples kept per channel. */
  k: number;
  /** False when the scan was interrupted. */
  complete: boolean;
  /** Its labels, as text, sorted. */
  labels: string[];
  /** The scanned layers. */
  layers: string[];
  /** Crops can be made (the widget has the dataset). */
  crops: boolean;
}

/** What a `layer` reply says about the layer from the dataset scan (`meta.scan` and the `scan_*` arrays). */
export interface LayerScan {
  images: number;
  /** Channels dead across the dataset. */
  dead: number;
  /** The label `selectivity` is for (null: none asked). */
  label: string | null;
  /** The two labels `effect` compares, or []. */
  pair: string[];
  /** Images of each label of `pair`. */
  counts: Record<string, number>;
  /** Dataset indices of images of each label of `pair`. */
  examples: Record<string, number[]>;
  /** Per channel sent: mean of the per-image spatial means, max of the spatial maxes, fraction of images > 0. */
  mean: Float32Array;
  max: Float32Array;
  active: Float32Array;
  /** Per channel sent, in [-1, 1], for `label`; null without a label. */
  selectivity: Float32Array | null;
  /** Cohen's d between the labels of `pair` (positive: higher for the first); null without a pair. */
  effect: Float32Array | null;
}

/** One top dataset example of a channel (an entry of an `examples` reply), with its crop when there is one. */
export interface DatasetExample {
  /** The image's index in the dataset. */
  index: number;
  /** The channel's score on it (its spatial max), at (`row`, `col`) of the map. */
  value: number;
  row: number;
  col: number;
  label: string | null;
  /** The receptive field in the input's pixels: [top, left, bottom, right]; null without a crop. */
  box: [number, number, number, number] | null;
  /** Centre of the field in the crop: [y, x]. */
  peak: [number, number] | null;
  /** The crop: height × width × 3 RGB bytes (a view into the reply's buffer), or null. */
  crop: InputPicture | null;
}

/** A decoded `examples` reply: the top examples of one channel, best first. */
export interface ExamplesResult {
  layer: string;
  channel: number;
  /** Whether the examples carry crops; `note` says why not. */
  crops: boolean;
  note: string;
  examples: DatasetExample[];
}

/** A small picture of one dataset image (an entry of a `pictures` reply). */
export interface DatasetPicture {
  /** The image's index in the dataset. */
  index: number;
  label: string | null;
  /** Height × width × 3 RGB bytes, at most 64 pixels on the longer side (a view into the reply's buffer). */
  picture: InputPicture;
}

/** `meta.groups` of a `layer` reply when the widget has groups. */
export interface GroupsInfo {
  /** The compared pair: `effect` is positive where the first group's mean activation is higher. */
  pair: [string, string];
  counts: Record<string, number>;
  /** Sample indices of each group. */
  examples: Record<string, number[]>;
}

/** Kernel-side state, shown above the grid when it is not "ready". */
export interface KernelStatus {
  state: "ready" | "busy" | "error";
  message: string;
}

/** How one sample's prediction moved when channels were zeroed (an entry of `ablation.changes`). */
export interface AblationChange {
  top_before: number;
  label_before: string | null;
  prob_before: number;
  top_after: number;
  label_after: string | null;
  prob_after: number;
  /** Probability of `top_before` after minus before: negative when the channels supported it. */
  prob_change: number;
}

/** The last ablation (`w.ablate()` or the view's button); `changes` is null without (N, classes) scores. */
export interface Ablation {
  layer: string;
  channels: number[];
  changes: AblationChange[] | null;
}

/**
 * The `task` trait: the kernel's long job (Grad-CAM, ablation) while it runs, sent a few times a second
 * (docs/protocol.md, "Long work").
 */
export interface TaskState {
  /** The request id the job answers: a `cancel` request for it stops the job. */
  id: number | null;
  /** What runs, e.g. "Score-CAM on features.18". */
  label: string;
  done: number;
  /** 0 while not known yet. */
  total: number;
  /** What `done` counts: "channels", "forwards". */
  unit: string;
  /** Seconds since the job started, when the kernel sent this. */
  elapsed: number;
}

/** Every synced trait of FeatureMapWidget, as the front end sees it. */
export interface Traits {
  layers: LayerMeta[];
  layer: string;
  channel: number | null;
  sample: number;
  num_samples: number;
  colormap: ColormapName;
  scale: Scope;
  symmetric: boolean;
  revision: number;
  status: KernelStatus;
  predictions: Prediction[][];
  sort: SortKey;
  top_k: number;
  selected: number[];
  height: number;
  gradcam: boolean;
  target: number | null;
  /** Zoom and pan; x, y are the visible centre as fractions of the grid's width and height. */
  view: ViewState;
  groups: string[];
  group_pair: string[];
  /** Written by the kernel; the view writes null to dismiss it. */
  ablation: Ablation | null;
  /** The Grad-CAM panel's method: "gradcam" (ours) or one of `cam_methods`. */
  cam_method: string;
  /** Methods this kernel offers, "gradcam" first (more with the grad-cam package installed). */
  cam_methods: string[];
  /** The widget's dataset scan, or null. */
  scan_info: ScanInfo | null;
  /** The class picker's label (one of `scan_info.labels`): layer replies then carry selectivity. */
  scan_label: string | null;
  /** Two labels compared across the dataset, or []: layer replies then carry `scan_effect`. */
  scan_pair: string[];
  /** The kernel's long job while it runs, else null. */
  task: TaskState | null;
  /** The step shown (an index into `steps`), or null for the model as it is now. */
  step: number | null;
  /** The checkpoints and recorded snapshots the step slider offers, in order. */
  steps: StepInfo[];
  /** What the view calls the model as it is now ("step 1200" after a live refresh); "" before any. */
  now_label: string;
  /** The model ran in training mode: BatchNorm used the batch's statistics and dropout was random. */
  training: boolean;
  /** The input frame every video layer shows (from 0); each one is a new run of the model. */
  frame: number;
  /** Frames of the input clip; 0 for a model without video layers. */
  frames: number;
}

/** One entry of the `steps` trait. */
export interface StepInfo {
  label: string;
  kind: "checkpoint" | "recorded";
}

/** A decoded `layer` reply: what the grid draws plus the group comparison, when the widget has groups. */
export interface LoadedLayer extends LayerData {
  /** Cohen's d of each channel between `groups.pair[0]` and `groups.pair[1]`; null without groups. */
  effect: Float32Array | null;
  groups: GroupsInfo | null;
  /** For a request with `channels`: the channels the reply holds, in order (at full resolution). */
  only: number[] | null;
  /** The dataset scan's view of the layer; null when the layer was not scanned (or there is no scan). */
  scan: LayerScan | null;
}

/** A decoded `channel` reply: one map's exact values and, for conv layers, the filter that made it. */
export interface ChannelData {
  layer: string;
  channel: number;
  height: number;
  width: number;
  values: Float32Array;
  filter: ConvFilter | null;
  /**
   * Null for the kernel's exact float32 values. A saved file's maps are dequantized from the 8-bit layer
   * data: each value is within `step / 2` of the true one, at 1/`downsample` of the layer's resolution.
   */
  quantized: { step: number; downsample: number } | null;
}

/** A conv kernel (Cin × kh × kw); `rgb` when it reads the input picture (draw it as colours). */
export interface ConvFilter {
  data: Float32Array;
  cin: number;
  kh: number;
  kw: number;
  rgb: boolean;
}

/** The input picture, RGB bytes row by row (a decoded `input` reply). */
export interface InputPicture {
  height: number;
  width: number;
  pixels: Uint8Array;
}

/** A decoded `gradcam` reply. */
export interface GradcamResult {
  layer: string;
  sample: number;
  /** "gradcam" (ours) or a pytorch-grad-cam method key such as "gradcam++". */
  method: string;
  /** The map is already scaled to [0, 1] per image (pytorch-grad-cam's methods, at input resolution). */
  normalized: boolean;
  /** The class the map is for (the kernel's choice when the request asked for the predicted one). */
  target: number | null;
  label: string | null;
  height: number;
  width: number;
  /** height × width, non-negative; not normalized unless `normalized`. */
  heatmap: Float32Array;
  /** One weight per channel of the layer; empty for methods without channel weights. */
  weights: Float32Array;
}

/** The conv value taken apart in an `explain` reply: patch, kernel and per-input-channel sums. */
export interface ConvExplanation {
  /** The conv layer (the layer itself, or the conv an activation follows). */
  layer: string;
  /** The channel's bias; null without one (or not finite). */
  bias: number | null;
  /** Σ per-channel sums + bias, in float64 (null when not finite). */
  total: number | null;
  /** The conv's input channels the patch comes from: [start, stop). */
  inputs: [number, number];
  cin: number;
  kh: number;
  kw: number;
  /** The conv reads the input picture (RGB): draw the patch and kernel as colours. */
  rgb: boolean;
  /** The conv's input under the kernel (cin × kh × kw), zeros where padding. */
  patch: Float32Array;
  /** The kernel of the channel (cin × kh × kw). */
  kernel: Float32Array;
  /** Σ patch × kernel per input channel (cin). */
  perChannel: Float32Array;
}

/** A decoded `explain` reply: how one value is computed and the input pixels it sees. */
export interface Explanation {
  layer: string;
  sample: number;
  channel: number;
  row: number;
  col: number;
  type: string;
  /** The captured value; null when not finite (NaN/Inf never travel as JSON). */
  value: number | null;
  /** "conv": a Conv2d taken apart; "conv+act": the activation after one; "layer": any other layer; "value": nothing more is known. */
  op: "conv" | "conv+act" | "layer" | "value";
  /** What the layer does, in one line with its numbers. */
  text: string;
  /** The layer's input at this position (element-wise layers), and what its formula gives. */
  before: number | null;
  after: number | null;
  /** The inputs a window op reads (pooling), rows × cols; null for others. */
  window: { data: Float32Array; rows: number; cols: number } | null;
  conv: ConvExplanation | null;
  /** For "conv+act": the activation's line, its input (the conv's value) and output. */
  activation: { layer: string; text: string; before: number | null; after: number | null } | null;
  /** The recomputed value equals the captured one; null when it could not be checked. */
  matches: boolean | null;
  /** The receptive field in input pixels: [top, left, bottom, right), bottom/right exclusive; null when unknown. */
  box: [number, number, number, number] | null;
  /** The input tensor's [H, W] that `box` is in. */
  inputShape: [number, number] | null;
  /** What the kernel could not do or check, as a sentence; "" when none. */
  note: string;
}

/** A decoded `ablate` reply (the result itself arrives in the `ablation` trait). */
export interface AblateReply {
  layer: string;
  channels: number[];
}

export type DType = "uint8" | "float32" | "int32" | "uint32";
export type TypedArray = Uint8Array | Float32Array | Int32Array | Uint32Array;

/** How a reply describes the array in the buffer with the same index. */
export interface ArraySpec {
  name: string;
  dtype: DType;
  shape: number[];
}

/** A decoded reply array: its description plus a typed view (or copy) of its bytes. */
export interface DecodedArray extends ArraySpec {
  data: TypedArray;
}

const ARRAY_TYPES = {
  uint8: Uint8Array,
  float32: Float32Array,
  int32: Int32Array,
  uint32: Uint32Array,
} as const;

/**
 * Builds the typed array a reply buffer holds, without copying when the buffer's offset is aligned to
 * the element size (typed arrays cannot start at an unaligned offset; then the bytes are copied once).
 *
 * @example
 *   const f = decodeArray({ name: "values", dtype: "float32", shape: [2, 3] }, dataView); // Float32Array(6)
 */
export function decodeArray(spec: ArraySpec, buffer: DataView | ArrayBufferView | ArrayBuffer): TypedArray {
  const Ctor = ARRAY_TYPES[spec.dtype];
  if (Ctor === undefined) {
    throw new Error(
      `reply array "${spec.name}" has dtype "${String(spec.dtype)}"; expected one of ${Object.keys(ARRAY_TYPES).join(", ")}`,
    );
  }
  const count = spec.shape.reduce((a, b) => a * b, 1);
  const size = Ctor.BYTES_PER_ELEMENT;
  // Comm buffers are never SharedArrayBuffers.
  const raw = (buffer instanceof ArrayBuffer ? buffer : buffer.buffer) as ArrayBuffer;
  const offset = buffer instanceof ArrayBuffer ? 0 : buffer.byteOffset;
  const length = buffer.byteLength;
  if (length !== count * size) {
    throw new Error(
      `reply array "${spec.name}" of shape [${spec.shape.join(", ")}] ${spec.dtype} needs ${count * size} bytes; its buffer has ${length}`,
    );
  }
  if (offset % size === 0) return new Ctor(raw, offset, count);
  const copy = new Uint8Array(raw, offset, length).slice();
  return new Ctor(copy.buffer, 0, count);
}

/**
 * Decodes every array of a reply: `buffers[i]` holds `specs[i]`.
 *
 * @example
 *   const { values, stats } = decodeArrays(msg.arrays, buffers);
 */
export function decodeArrays(
  specs: readonly ArraySpec[],
  buffers: readonly (DataView | ArrayBufferView | ArrayBuffer)[],
): Record<string, DecodedArray> {
  if (specs.length !== buffers.length) {
    throw new Error(`reply lists ${specs.length} arrays but carries ${buffers.length} buffers`);
  }
  const out: Record<string, DecodedArray> = {};
  specs.forEach((spec, i) => {
    out[spec.name] = { ...spec, data: decodeArray(spec, buffers[i]) };
  });
  return out;
}

/** The arguments of each request kind (docs/protocol.md, "Requests"); `revision` is added by the requester. */
export interface RequestArgs {
  layer: { layer: string; sample: number; max_values?: number; channels?: number[] };
  channel: { layer: string; sample: number; channel: number };
  input: { sample: number };
  gradcam: { layer: string; sample: number; target: number | null; method: string };
  ablate: { layer: string; channels: number[] };
  examples: { layer: string; channel: number };
  use_example: { index: number };
  pictures: { indices: number[] };
  /** Stops the job answering request `task` (running or queued); null: the running one. */
  cancel: { task: number | null };
  explain: { layer: string; sample: number; channel: number; row: number; col: number };
}

export type RequestKind = keyof RequestArgs;

/** What `Requester.ask` resolves with, per kind. */
export interface Decoded {
  layer: LoadedLayer;
  channel: ChannelData;
  input: InputPicture;
  gradcam: GradcamResult;
  ablate: AblateReply;
  examples: ExamplesResult;
  use_example: { index: number };
  pictures: DatasetPicture[];
  cancel: { cancelled: boolean };
  explain: Explanation;
}

/** A successful reply, decoded. */
export interface Reply {
  id: number;
  kind: RequestKind;
  meta: Record<string, unknown>;
  arrays: Record<string, DecodedArray>;
}

/** The kernel answered with `ok: false`, or its reply could not be decoded. */
export class RequestError extends Error {
  readonly kind: RequestKind;
  constructor(kind: RequestKind, message: string) {
    super(message);
    this.name = "RequestError";
    this.kind = kind;
  }
}

/** The kernel stopped the job on a `cancel` (the view's Cancel button): not an error to show as one. */
export class RequestCancelled extends RequestError {
  constructor(kind: RequestKind) {
    super(kind, "cancelled");
    this.name = "RequestCancelled";
  }
}

/**
 * Whether a rejection means the job was cancelled.
 *
 * @example
 *   source.gradcam(key, args).catch((e) => (isCancelled(e) ? panel.showCancelled() : panel.showError(e.message)));
 */
export function isCancelled(error: unknown): error is RequestCancelled {
  return error instanceof RequestCancelled;
}

export type DropReason = "superseded" | "aborted" | "stale" | "disposed";

/**
 * The reply will never be used: a newer request for the same purpose, an abort, a new revision or a
 * closed view. Callers ignore these (see {@link isDropped}); they are not errors to show.
 */
export class RequestDropped extends Error {
  readonly reason: DropReason;
  constructor(reason: DropReason) {
    super(`request dropped (${reason})`);
    this.name = "RequestDropped";
    this.reason = reason;
  }
}

/**
 * Whether a rejection only means "this answer is no longer wanted".
 *
 * @example
 *   requester.request(...).catch((e) => { if (!isDropped(e)) showError(e); });
 */
export function isDropped(error: unknown): error is RequestDropped {
  return error instanceof RequestDropped;
}

/** The part of an anywidget model the requester needs (a fake one in tests). */
export interface MessageModel {
  send(content: unknown, callbacks?: unknown, buffers?: ArrayBuffer[] | ArrayBufferView[]): void;
  on(event: "msg:custom", callback: (msg: unknown, buffers: DataView[]) => void): void;
  off(event: "msg:custom", callback: (msg: unknown, buffers: DataView[]) => void): void;
}

export interface RequesterOptions {
  /** The revision the view knows; sent with every request, and replies for another one are dropped. */
  revision: () => number;
  /** Called with true when a reply is slower than `busyDelayMs` (the kernel is running a cell), false when all came back. */
  onBusy?: (busy: boolean) => void;
  busyDelayMs?: number;
  /**
   * Data the kernel sent unasked (`type: "push"`: a live refresh's shown layer, ahead of its new revision),
   * its envelope checked and arrays decoded; pushes with an error or of a kind this view does not know are dropped.
   */
  onPush?: (reply: Reply) => void;
}

export interface RequestOptions {
  /** Requests sharing a purpose replace each other: only the latest one's reply is used. */
  purpose?: string;
  signal?: AbortSignal;
}

interface Pending {
  id: number;
  kind: RequestKind;
  revision: number;
  content: Record<string, unknown>;
  purpose: string | undefined;
  resolve: (reply: Reply) => void;
  reject: (error: Error) => void;
  settled: boolean;
  slow: boolean;
  timer: ReturnType<typeof setTimeout> | undefined;
  unlisten: () => void;
}

/**
 * Request kinds whose replaced requests are cancelled at the kernel: a minute of Score-CAM or ablation nobody
 * waits for. (A layer the memory budget dropped is a job too, recomputing one sample: its Cancel button
 * stops it, and a replaced one is not worth a message per slider step.)
 */
const JOB_KINDS: ReadonlySet<RequestKind> = new Set<RequestKind>(["gradcam", "ablate"]);

interface Slot {
  inflight: Pending | null;
  queued: Pending | null;
}

/**
 * Sends `{type: "request", id, kind, revision, ...args}` and resolves with the matching reply.
 *
 * Per purpose at most one request is at the kernel and one waits behind it; a newer request replaces the
 * waiting one and makes the one at the kernel be dropped on arrival. So scrubbing through 50 layers
 * while a cell runs costs the kernel two layers, not 50, once it is free again.
 *
 * @example
 *   const r = new Requester(model, { revision: () => store.get("revision"), onBusy: showBusy });
 *   const reply = await r.request("channel", { layer, sample, channel: 3 }, { purpose: "detail" });
 *   r.dispose();
 */
export class Requester {
  private readonly model: MessageModel;
  private readonly options: RequesterOptions;
  private readonly pending = new Map<number, Pending>();
  private readonly slots = new Map<string, Slot>();
  // Every view of a widget receives every reply; a random start keeps two views' ids apart.
  private nextId = 1 + Math.floor(Math.random() * 2 ** 30);
  private busy = false;
  private disposed = false;
  private readonly listener = (msg: unknown, buffers: DataView[]): void => this.onMessage(msg, buffers);

  constructor(model: MessageModel, options: RequesterOptions) {
    this.model = model;
    this.options = options;
    model.on("msg:custom", this.listener);
  }

  /**
   * Asks the kernel for data; rejects with {@link RequestError} on an error reply and with
   * {@link RequestDropped} when the answer is no longer wanted.
   *
   * @example
   *   const reply = await requester.request("input", { sample: 0 });
   *   reply.arrays.image.data; // Uint8Array, H*W*3
   */
  request(kind: RequestKind, args: object, options: RequestOptions = {}): Promise<Reply> {
    if (this.disposed) return Promise.reject(new RequestDropped("disposed"));
    if (options.signal?.aborted) return Promise.reject(new RequestDropped("aborted"));
    const revision = this.options.revision();
    const id = this.nextId++;
    return new Promise<Reply>((resolve, reject) => {
      const entry: Pending = {
        id,
        kind,
        revision,
        content: { type: "request", id, kind, revision, ...args },
        purpose: options.purpose,
        resolve,
        reject,
        settled: false,
        slow: false,
        timer: undefined,
        unlisten: () => {},
      };
      const signal = options.signal;
      if (signal !== undefined) {
        const onAbort = (): void => this.abort(entry);
        signal.addEventListener("abort", onAbort, { once: true });
        entry.unlisten = () => signal.removeEventListener("abort", onAbort);
      }
      if (entry.purpose === undefined) {
        this.send(entry);
        return;
      }
      const slot = this.slot(entry.purpose);
      if (slot.queued !== null) this.settle(slot.queued, new RequestDropped("superseded"));
      slot.queued = null;
      if (slot.inflight === null) {
        slot.inflight = entry;
        this.send(entry);
      } else {
        this.settle(slot.inflight, new RequestDropped("superseded"));
        this.cancelJob(slot.inflight);
        slot.queued = entry;
      }
    });
  }

  /**
   * {@link request}, then the decoder of that reply kind: a reply that does not hold what its kind
   * promises rejects with {@link RequestError} ("malformed channel reply: …").
   *
   * @example
   *   const map = await requester.ask("channel", { layer: "conv1", sample: 0, channel: 3 }, { purpose: "detail" });
   *   map.values; // Float32Array, map.height × map.width
   */
  ask<K extends RequestKind>(kind: K, args: RequestArgs[K], options: RequestOptions = {}): Promise<Decoded[K]> {
    return this.request(kind, args, options).then((reply) => {
      try {
        return DECODERS[kind](reply, args);
      } catch (e) {
        throw new RequestError(kind, `malformed ${kind} reply: ${(e as Error).message}`);
      }
    });
  }

  /** Whether some reply is overdue (the kernel is busy). */
  get isBusy(): boolean {
    return this.busy;
  }

  /**
   * Stops listening for replies and drops every pending request.
   *
   * @example
   *   signal.addEventListener("abort", () => requester.dispose());
   */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.model.off("msg:custom", this.listener);
    for (const entry of this.pending.values()) {
      clearTimeout(entry.timer);
      this.settle(entry, new RequestDropped("disposed"));
    }
    for (const slot of this.slots.values()) {
      if (slot.queued !== null) this.settle(slot.queued, new RequestDropped("disposed"));
    }
    this.pending.clear();
    this.slots.clear();
  }

  private slot(purpose: string): Slot {
    let slot = this.slots.get(purpose);
    if (slot === undefined) {
      slot = { inflight: null, queued: null };
      this.slots.set(purpose, slot);
    }
    return slot;
  }

  private send(entry: Pending): void {
    this.pending.set(entry.id, entry);
    entry.timer = setTimeout(() => {
      entry.slow = true;
      this.updateBusy();
    }, this.options.busyDelayMs ?? 1500);
    this.model.send(entry.content);
  }

  private abort(entry: Pending): void {
    const slot = entry.purpose === undefined ? undefined : this.slots.get(entry.purpose);
    // A request still waiting its turn is simply never sent; one at the kernel keeps its slot until it returns.
    if (slot !== undefined && slot.queued === entry) slot.queued = null;
    else this.cancelJob(entry);
    this.settle(entry, new RequestDropped("aborted"));
  }

  /**
   * A long job nobody waits for any more (Score-CAM of a layer left behind) is stopped at the kernel, so the
   * request that replaced it does not wait a minute behind it. The kernel ignores ids it is not working on.
   */
  private cancelJob(entry: Pending): void {
    if (!JOB_KINDS.has(entry.kind) || !this.pending.has(entry.id) || this.disposed) return;
    this.request("cancel", { task: entry.id }).catch(() => {});
  }

  private settle(entry: Pending, outcome: Reply | Error): void {
    if (entry.settled) return;
    entry.settled = true;
    entry.unlisten();
    if (outcome instanceof Error) entry.reject(outcome);
    else entry.resolve(outcome);
  }

  private updateBusy(): void {
    let busy = false;
    for (const entry of this.pending.values()) busy ||= entry.slow;
    if (busy !== this.busy) {
      this.busy = busy;
      this.options.onBusy?.(busy);
    }
  }

  private onMessage(msg: unknown, buffers: DataView[]): void {
    if (typeof msg !== "object" || msg === null) return;
    const m = msg as Record<string, unknown>;
    if (m.type === "push") {
      this.onPush(m, buffers ?? []);
      return;
    }
    if (m.type !== "reply" || typeof m.id !== "number") return;
    const entry = this.pending.get(m.id);
    // Another view's reply (ids are per view) carries an id we never sent, or one of another kind.
    if (entry === undefined || m.kind !== entry.kind) return;
    this.pending.delete(entry.id);
    clearTimeout(entry.timer);
    this.updateBusy();
    if (entry.purpose !== undefined) {
      const slot = this.slot(entry.purpose);
      if (slot.inflight === entry) {
        slot.inflight = slot.queued;
        slot.queued = null;
        if (slot.inflight !== null) this.send(slot.inflight);
      }
    }
    if (entry.settled) return;
    this.settle(entry, this.decode(entry, m, buffers ?? []));
  }

  private onPush(m: Record<string, unknown>, buffers: DataView[]): void {
    const kind = m.kind;
    if (this.options.onPush === undefined || typeof kind !== "string" || !(kind in DECODERS)) return;
    const reply = checkedReply(kind as RequestKind, 0, m, buffers);
    if (!(reply instanceof RequestError)) this.options.onPush(reply);
  }

  private decode(entry: Pending, m: Record<string, unknown>, buffers: DataView[]): Reply | Error {
    const meta = (typeof m.meta === "object" && m.meta !== null ? m.meta : {}) as Record<string, unknown>;
    const revision = typeof meta.revision === "number" ? meta.revision : entry.revision;
    if (revision !== this.options.revision() || entry.revision !== this.options.revision()) {
      return new RequestDropped("stale");
    }
    return checkedReply(entry.kind, entry.id, m, buffers);
  }
}

/** A reply's envelope checked (version, ok) and its arrays decoded; an error reply as a RequestError. */
function checkedReply(
  kind: RequestKind,
  id: number,
  m: Record<string, unknown>,
  buffers: readonly (DataView | ArrayBufferView)[],
): Reply | RequestError {
  const meta = (typeof m.meta === "object" && m.meta !== null ? m.meta : {}) as Record<string, unknown>;
  if (m.v !== PROTOCOL_VERSION) {
    return new RequestError(
      kind,
      `the kernel speaks protocol v${String(m.v)}, this view v${PROTOCOL_VERSION}: reinstall fmwidget and restart the kernel`,
    );
  }
  if (m.ok !== true && m.cancelled === true) return new RequestCancelled(kind);
  if (m.ok !== true) {
    const text = typeof m.error === "string" && m.error !== "" ? m.error : "the kernel gave no reason";
    return new RequestError(kind, text);
  }
  try {
    const specs = Array.isArray(m.arrays) ? (m.arrays as ArraySpec[]) : [];
    return { id, kind, meta, arrays: decodeArrays(specs, buffers) };
  } catch (e) {
    return new RequestError(kind, `malformed ${kind} reply: ${(e as Error).message}`);
  }
}

/**
 * A recorded reply (its message content and buffers, as the kernel sent them) decoded as `ask` would:
 * a saved HTML file keeps the kernel's replies and reads them here, through the same decoders.
 * Throws {@link RequestError} for an error reply or one that does not hold what its kind promises.
 *
 * @example
 *   const layer = decodeRecorded("layer", content, [values, stats, flags], { layer: "conv1", sample: 0 });
 */
export function decodeRecorded<K extends RequestKind>(
  kind: K,
  content: Record<string, unknown>,
  buffers: readonly (DataView | ArrayBufferView)[],
  args: RequestArgs[K],
): Decoded[K] {
  const reply = checkedReply(kind, typeof content.id === "number" ? content.id : 0, content, buffers);
  if (reply instanceof RequestError) throw reply;
  try {
    return DECODERS[kind](reply, args);
  } catch (e) {
    throw new RequestError(kind, `malformed ${kind} reply: ${(e as Error).message}`);
  }
}

function numbers(value: unknown, name: string, length: number): number[] {
  if (!Array.isArray(value) || value.length !== length || !value.every((x) => typeof x === "number")) {
    throw new Error(`meta.${name} is ${JSON.stringify(value)}; expected ${length} numbers`);
  }
  return value as number[];
}

function array<T extends TypedArray>(
  reply: Reply,
  name: string,
  Ctor: abstract new (...args: never[]) => T,
  length: number,
): T {
  const a = reply.arrays[name];
  if (a === undefined || !(a.data instanceof Ctor) || a.data.length !== length) {
    const found = a === undefined ? "missing" : `${a.dtype} [${a.shape.join(", ")}]`;
    throw new Error(`array "${name}" is ${found}; expected ${length} values`);
  }
  return a.data;
}

/**
 * Turns a `layer` reply into what the grid draws. The layer's range for "layer" scale is its batch-wide
 * finite range from `LayerMeta` when given (see {@link withBatchRange}), else this sample's. The optional
 * `effect` array and `meta.groups` (widgets with groups) and `meta.channels` (a full-resolution request
 * for some channels) come along.
 *
 * @example
 *   grid.setLayer(toLayerData(reply, layers.find((l) => l.name === "conv1")));
 */
export function toLayerData(reply: Reply, layerMeta?: LayerMeta): LoadedLayer {
  const [C, H, W] = numbers(reply.meta.shape, "shape", 3);
  const [c, h, w] = numbers(reply.meta.stored, "stored", 3);
  const values = array(reply, "values", Uint8Array, c * h * w);
  const stats = array(reply, "stats", Float32Array, c * STATS_WIDTH);
  const flags = array(reply, "flags", Uint8Array, c);
  let layerMin = Infinity;
  let layerMax = -Infinity;
  for (let i = 0; i < c; i++) {
    layerMin = Math.min(layerMin, statOf(stats, i, "min"));
    layerMax = Math.max(layerMax, statOf(stats, i, "max"));
  }
  if (c === 0) [layerMin, layerMax] = [0, 0];
  const data: LoadedLayer = {
    layer: String(reply.meta.layer ?? layerMeta?.name ?? ""),
    channels: c,
    height: h,
    width: w,
    fullHeight: H,
    fullWidth: W,
    downsample: typeof reply.meta.downsample === "number" ? reply.meta.downsample : 1,
    values,
    stats,
    flags,
    layerMin,
    layerMax,
    effect: effectOf(reply, C, c),
    groups: groupsInfo(reply.meta.groups),
    only: reply.meta.channels == null ? null : numbers(reply.meta.channels, "channels", c),
    scan: layerScan(reply, c),
  };
  return layerMeta === undefined ? data : withBatchRange(data, layerMeta);
}

/**
 * The layer with its batch-wide finite range (LayerMeta min/max) for the "layer" scale, so switching
 * samples keeps colours comparable; a layer whose batch range is not finite keeps this sample's.
 *
 * @example
 *   withBatchRange(data, metaOf(data.layer)); // layerMin/layerMax = meta.min/meta.max
 */
export function withBatchRange(data: LoadedLayer, layerMeta: LayerMeta): LoadedLayer {
  if (!Number.isFinite(layerMeta.min) || !Number.isFinite(layerMeta.max)) return data;
  return { ...data, layerMin: layerMeta.min, layerMax: layerMeta.max };
}

/** The optional `effect` array: one d per channel of the layer (C), or per channel sent (C') for a `channels` request. */
function effectOf(reply: Reply, C: number, c: number): Float32Array | null {
  const a = reply.arrays.effect;
  if (a === undefined) return null;
  return array(reply, "effect", Float32Array, a.data.length === C ? C : c);
}

function groupsInfo(value: unknown): GroupsInfo | null {
  if (value === undefined || value === null) return null;
  const g = value as Partial<GroupsInfo>;
  const pairOk = Array.isArray(g.pair) && g.pair.length === 2 && g.pair.every((x) => typeof x === "string");
  const examplesOk =
    typeof g.examples === "object" &&
    g.examples !== null &&
    Object.values(g.examples).every((list) => Array.isArray(list) && list.every((i) => Number.isInteger(i)));
  if (!pairOk || !examplesOk || typeof g.counts !== "object" || g.counts === null) {
    throw new Error(
      `meta.groups is ${JSON.stringify(value)}; expected {pair: [str, str], counts: {label: n}, examples: {label: [sample, ...]}}`,
    );
  }
  return { pair: g.pair as [string, string], counts: g.counts, examples: g.examples as Record<string, number[]> };
}

/** `meta.scan` and the `scan_*` arrays (one value per channel sent), or null for a layer not scanned. */
function layerScan(reply: Reply, c: number): LayerScan | null {
  const meta = reply.meta.scan;
  if (meta === undefined || meta === null) return null;
  const m = meta as Record<string, unknown>;
  if (typeof m.images !== "number" || typeof m.dead !== "number") {
    throw new Error(`meta.scan is ${JSON.stringify(meta)}; expected {images, dead, label, pair}`);
  }
  const optional = (name: string): Float32Array | null =>
    reply.arrays[name] === undefined ? null : array(reply, name, Float32Array, c);
  const pair = Array.isArray(m.pair) && m.pair.every((x) => typeof x === "string") ? (m.pair as string[]) : [];
  const record = <T>(v: unknown): Record<string, T> =>
    typeof v === "object" && v !== null && !Array.isArray(v) ? (v as Record<string, T>) : {};
  return {
    images: m.images,
    dead: m.dead,
    label: typeof m.label === "string" ? m.label : null,
    pair,
    counts: record<number>(m.counts),
    examples: record<number[]>(m.examples),
    mean: array(reply, "scan_mean", Float32Array, c),
    max: array(reply, "scan_max", Float32Array, c),
    active: array(reply, "scan_active", Float32Array, c),
    selectivity: optional("scan_selectivity"),
    effect: optional("scan_effect"),
  };
}

function decodeChannel(reply: Reply, args: RequestArgs["channel"]): ChannelData {
  const [height, width] = numbers(reply.meta.shape, "shape", 2);
  const values = array(reply, "values", Float32Array, height * width);
  const f = reply.arrays.filter;
  const filter =
    f !== undefined && f.data instanceof Float32Array && f.shape.length === 3
      ? { data: f.data, cin: f.shape[0], kh: f.shape[1], kw: f.shape[2], rgb: reply.meta.rgb === true }
      : null;
  return { layer: args.layer, channel: args.channel, height, width, values, filter, quantized: null };
}

function decodeInput(reply: Reply): InputPicture {
  const [height, width] = numbers(reply.meta.shape, "shape", 3);
  return { height, width, pixels: array(reply, "image", Uint8Array, height * width * 3) };
}

function decodeGradcam(reply: Reply, args: RequestArgs["gradcam"]): GradcamResult {
  const heatmap = reply.arrays.heatmap;
  if (heatmap === undefined || !(heatmap.data instanceof Float32Array) || heatmap.shape.length !== 2) {
    throw new Error("the reply carried no float32 (H, W) heatmap");
  }
  const weights = reply.arrays.weights?.data;
  if (!(weights instanceof Float32Array)) throw new Error("the reply carried no float32 weights");
  const { method, target, label, normalized } = reply.meta;
  return {
    layer: args.layer,
    sample: args.sample,
    method: typeof method === "string" ? method : args.method,
    normalized: normalized === true,
    target: typeof target === "number" ? target : args.target,
    label: typeof label === "string" ? label : null,
    height: heatmap.shape[0],
    width: heatmap.shape[1],
    heatmap: heatmap.data,
    weights,
  };
}

function decodeAblate(reply: Reply, args: RequestArgs["ablate"]): AblateReply {
  const { layer, channels } = reply.meta;
  return {
    layer: typeof layer === "string" ? layer : args.layer,
    channels: Array.isArray(channels) ? (channels as number[]) : args.channels,
  };
}

/**
 * An `examples` reply: each entry's crop is `pixels[offset : offset + h·w·3]`, a view (no copy) of the
 * reply's buffer; without crops (`meta.crops` false) the entries come alone and `note` says why.
 */
export function decodeExamples(reply: Reply, args: RequestArgs["examples"]): ExamplesResult {
  const { crops, note, examples } = reply.meta;
  if (!Array.isArray(examples)) throw new Error(`meta.examples is ${JSON.stringify(examples)}; expected a list`);
  const withCrops = crops === true;
  const pixels = withCrops ? reply.arrays.pixels?.data : undefined;
  if (withCrops && !(pixels instanceof Uint8Array)) throw new Error('the reply carried no uint8 "pixels"');
  const list = examples.map((value, i): DatasetExample => {
    const e = value as Record<string, unknown>;
    if (typeof e.index !== "number" || typeof e.value !== "number") {
      throw new Error(`meta.examples[${i}] is ${JSON.stringify(value)}; expected {index, value, ...}`);
    }
    let crop: InputPicture | null = null;
    if (pixels instanceof Uint8Array) {
      const [height, width] = numbers(e.shape, `examples[${i}].shape`, 2);
      const offset = typeof e.offset === "number" ? e.offset : -1;
      const size = height * width * 3;
      if (!(offset >= 0 && offset + size <= pixels.length)) {
        throw new Error(
          `crop ${i} (offset ${offset}, ${height} × ${width} × 3) lies outside pixels (${pixels.length})`,
        );
      }
      crop = { height, width, pixels: pixels.subarray(offset, offset + size) };
    }
    return {
      index: e.index,
      value: e.value,
      row: typeof e.row === "number" ? e.row : 0,
      col: typeof e.col === "number" ? e.col : 0,
      label: typeof e.label === "string" ? e.label : null,
      box: crop === null ? null : (numbers(e.box, `examples[${i}].box`, 4) as [number, number, number, number]),
      peak: crop === null ? null : (numbers(e.peak, `examples[${i}].peak`, 2) as [number, number]),
      crop,
    };
  });
  return {
    layer: typeof reply.meta.layer === "string" ? reply.meta.layer : args.layer,
    channel: typeof reply.meta.channel === "number" ? reply.meta.channel : args.channel,
    crops: withCrops,
    note: typeof note === "string" ? note : "",
    examples: list,
  };
}

/**
 * A `pictures` reply: each picture is `pixels[offset : offset + h·w·3]`, a view (no copy) of the reply's
 * buffer, in the order of `meta.pictures`.
 *
 * @example
 *   const pictures = decodePictures(reply, { indices: [3, 17] });
 *   pictures[0].picture.pixels; // Uint8Array, h × w × 3
 */
export function decodePictures(reply: Reply, _args: RequestArgs["pictures"]): DatasetPicture[] {
  const { pictures } = reply.meta;
  if (!Array.isArray(pictures)) throw new Error(`meta.pictures is ${JSON.stringify(pictures)}; expected a list`);
  const pixels = reply.arrays.pixels?.data;
  if (!(pixels instanceof Uint8Array)) throw new Error('the reply carried no uint8 "pixels"');
  return pictures.map((value, i): DatasetPicture => {
    const p = value as Record<string, unknown>;
    if (p === null || typeof p !== "object" || typeof p.index !== "number") {
      throw new Error(`meta.pictures[${i}] is ${JSON.stringify(value)}; expected {index, label, shape, offset}`);
    }
    const [height, width] = numbers(p.shape, `pictures[${i}].shape`, 2);
    const offset = typeof p.offset === "number" ? p.offset : -1;
    const size = height * width * 3;
    if (!(offset >= 0 && offset + size <= pixels.length)) {
      throw new Error(
        `picture ${i} (offset ${offset}, ${height} × ${width} × 3) lies outside pixels (${pixels.length})`,
      );
    }
    return {
      index: p.index,
      label: typeof p.label === "string" ? p.label : p.label == null ? null : String(p.label),
      picture: { height, width, pixels: pixels.subarray(offset, offset + size) },
    };
  });
}

const EXPLAIN_OPS: readonly Explanation["op"][] = ["conv", "conv+act", "layer", "value"];

/** A number or null from a reply's meta (anything else is null). */
function numberOrNull(v: unknown): number | null {
  return typeof v === "number" && Number.isFinite(v) ? v : null;
}

/**
 * An `explain` reply: the conv's `patch`, `kernel` and `per_channel` arrays (float32, views into the
 * reply's buffers) checked against `meta.conv.shape`; a pooling `window` against `meta.window_shape`.
 *
 * @example
 *   const e = decodeExplain(reply, { layer: "conv1", sample: 0, channel: 3, row: 4, col: 5 });
 *   e.conv?.perChannel; // Float32Array, one sum per input channel
 */
export function decodeExplain(reply: Reply, args: RequestArgs["explain"]): Explanation {
  const m = reply.meta;
  const op = EXPLAIN_OPS.find((o) => o === m.op);
  if (op === undefined)
    throw new Error(`meta.op is ${JSON.stringify(m.op)}; expected one of ${EXPLAIN_OPS.join(", ")}`);
  let conv: ConvExplanation | null = null;
  if (m.conv != null) {
    const c = m.conv as Record<string, unknown>;
    const [cin, kh, kw] = numbers(c.shape, "conv.shape", 3);
    const inputs = numbers(c.inputs, "conv.inputs", 2) as [number, number];
    conv = {
      layer: typeof c.layer === "string" ? c.layer : args.layer,
      bias: numberOrNull(c.bias),
      total: numberOrNull(c.total),
      inputs,
      cin,
      kh,
      kw,
      rgb: c.rgb === true,
      patch: array(reply, "patch", Float32Array, cin * kh * kw),
      kernel: array(reply, "kernel", Float32Array, cin * kh * kw),
      perChannel: array(reply, "per_channel", Float32Array, cin),
    };
  } else if (op === "conv" || op === "conv+act") {
    throw new Error(`an "${op}" explanation needs meta.conv`);
  }
  let window: Explanation["window"] = null;
  if (m.window_shape != null) {
    const [rows, cols] = numbers(m.window_shape, "window_shape", 2);
    window = { data: array(reply, "window", Float32Array, rows * cols), rows, cols };
  }
  const a = m.activation as Record<string, unknown> | null | undefined;
  const box = m.box == null ? null : (numbers(m.box, "box", 4) as [number, number, number, number]);
  return {
    layer: typeof m.layer === "string" ? m.layer : args.layer,
    sample: typeof m.sample === "number" ? m.sample : args.sample,
    channel: typeof m.channel === "number" ? m.channel : args.channel,
    row: typeof m.row === "number" ? m.row : args.row,
    col: typeof m.col === "number" ? m.col : args.col,
    type: typeof m.type === "string" ? m.type : "",
    value: numberOrNull(m.value),
    op,
    text: typeof m.text === "string" ? m.text : "",
    before: numberOrNull(m.before),
    after: numberOrNull(m.after),
    window,
    conv,
    activation:
      a == null
        ? null
        : {
            layer: typeof a.layer === "string" ? a.layer : args.layer,
            text: typeof a.text === "string" ? a.text : "",
            before: numberOrNull(a.before),
            after: numberOrNull(a.after),
          },
    matches: typeof m.matches === "boolean" ? m.matches : null,
    box,
    inputShape:
      box === null || m.input_shape == null ? null : (numbers(m.input_shape, "input_shape", 2) as [number, number]),
    note: typeof m.note === "string" ? m.note : "",
  };
}

/** One decoder per reply kind, applied by `Requester.ask`. */
/**
 * A checked reply (a pushed one: see `RequesterOptions.onPush`) decoded as `ask` decodes its kind.
 *
 * @example
 *   const data = decodeReply("layer", reply, { layer: "conv1", sample: 0 });
 */
export function decodeReply<K extends RequestKind>(kind: K, reply: Reply, args: RequestArgs[K]): Decoded[K] {
  return DECODERS[kind](reply, args);
}

const DECODERS: { [K in RequestKind]: (reply: Reply, args: RequestArgs[K]) => Decoded[K] } = {
  layer: (reply) => toLayerData(reply),
  channel: decodeChannel,
  input: decodeInput,
  gradcam: decodeGradcam,
  ablate: decodeAblate,
  examples: decodeExamples,
  use_example: (reply, args) => ({ index: typeof reply.meta.index === "number" ? reply.meta.index : args.index }),
  pictures: decodePictures,
  cancel: (reply) => ({ cancelled: reply.meta.cancelled === true }),
  explain: decodeExplain,
};
