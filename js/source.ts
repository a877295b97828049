/**
 * Where the views get their data: layers, single channels, the input picture and Grad-CAM maps. The
 * kernel-backed source asks the kernel (through the Requester, latest request per purpose wins) and
 * caches what it got; a source reading data embedded in a saved HTML file can stand in for it, and no
 * view knows which one it talks to.
 *
 * @example
 *   const source = new KernelSource(model, store);
 *   const data = source.peekLayer(key) ?? (await source.loadLayer(key));
 *   const map = await source.channel({ layer: "conv1", sample: 0, channel: 3 });
 */
import { type LayerKey, LayerLoader, LruCache, layerKey } from "./cache";
import {
  type AblateReply,
  type ChannelData,
  type DatasetPicture,
  decodeReply,
  type ExamplesResult,
  type Explanation,
  type GradcamResult,
  type InputPicture,
  isDropped,
  type LoadedLayer,
  type MessageModel,
  type Reply,
  type RequestArgs,
  Requester,
  withBatchRange,
} from "./protocol";
import type { Store } from "./store";

/** What the views need, whoever provides it. Rejections with `RequestDropped` mean "no longer wanted". */
export interface DataSource {
  /**
   * Whether a kernel answers: false for a saved HTML file, where what re-runs the model (ablation, making a
   * dataset image the input) is not offered.
   */
  readonly live: boolean;
  /** A cached layer, at once (a cached layer shows without waiting a frame). */
  peekLayer(key: LayerKey): LoadedLayer | undefined;
  /** The layer to show; a newer call replaces an older one that has not arrived. */
  loadLayer(key: LayerKey): Promise<LoadedLayer>;
  /** Layers likely to be shown next, fetched in the background in order. */
  prefetch(layers: readonly string[], sample: number, revision: number): void;
  /** Forgets cached layers (a new capture, another group pair). */
  clearLayers(): void;
  /** Some channels of a layer at full resolution (for zoomed-in tiles of a downsampled layer). */
  fullRes(layer: string, sample: number, channels: number[]): Promise<LoadedLayer>;
  /** One channel's exact map (and filter); `purpose` keeps one request per caller in flight. */
  channel(args: RequestArgs["channel"]): Promise<ChannelData>;
  /** The input picture of a sample. */
  input(sample: number, purpose: string): Promise<InputPicture>;
  /** A cached Grad-CAM map by cam key (see `Store.camKey`). */
  peekGradcam(key: string): GradcamResult | undefined;
  /** Computes (or reads) a Grad-CAM map and caches it under `key`. */
  gradcam(key: string, args: RequestArgs["gradcam"]): Promise<GradcamResult>;
  /** Forgets cached Grad-CAM maps (a new capture). */
  clearGradcam(): void;
  /** Zeroes channels and re-runs the model (the result arrives in the `ablation` trait). */
  ablate(args: RequestArgs["ablate"]): Promise<AblateReply>;
  /** The top dataset examples of a channel from the widget's scan (cached per layer, channel and scan). */
  examples(layer: string, channel: number): Promise<ExamplesResult>;
  /** Makes a dataset image the input; resolves once the kernel has re-run (the new revision is in the traits). */
  useExample(index: number): Promise<{ index: number }>;
  /**
   * Small pictures of dataset images (1 to 16 indices; a group audit's examples), in the order asked,
   * cached per indices and scan; a newer call replaces an older one that has not arrived.
   */
  pictures(indices: readonly number[]): Promise<DatasetPicture[]>;
  /** How one value of a channel's map is computed and where it looks (the latest call wins). */
  explain(args: RequestArgs["explain"]): Promise<Explanation>;
  /** Stops the kernel's job that answers request `task` (the `task` trait's id); absent where no kernel runs jobs. */
  cancel?(task: number | null): void;
  destroy(): void;
}

/** Grad-CAM maps kept for revisits: a pytorch-grad-cam map at input resolution is about 200 KB. */
const GRADCAM_CACHE_BYTES = 16 * 2 ** 20;
/** Top-example lists kept for revisits: nine 40 × 40 crops are about 43 KB. */
const EXAMPLES_CACHE_BYTES = 8 * 2 ** 20;
/** Dataset pictures kept for revisits: 16 pictures of 64 × 64 are about 200 KB. */
const PICTURES_CACHE_BYTES = 4 * 2 ** 20;

/** The data source of a live widget: every piece of data is a request to the kernel. */
export class KernelSource implements DataSource {
  readonly live = true;
  private readonly requester: Requester;
  private readonly loader: LayerLoader;
  private readonly cams = new LruCache<GradcamResult>(
    GRADCAM_CACHE_BYTES,
    (r) => r.heatmap.byteLength + r.weights.byteLength,
  );
  private readonly examplesCache = new LruCache<ExamplesResult>(EXAMPLES_CACHE_BYTES, (r) =>
    r.examples.reduce((n, e) => n + 64 + (e.crop?.pixels.byteLength ?? 0), 0),
  );
  /** The `scan_info` the cached examples belong to: a new scan (a new object from the kernel) empties it. */
  private examplesScan: unknown = null;
  private readonly picturesCache = new LruCache<DatasetPicture[]>(PICTURES_CACHE_BYTES, (r) =>
    r.reduce((n, p) => n + 64 + p.picture.pixels.byteLength, 0),
  );
  /** The `scan_info` the cached pictures belong to. */
  private picturesScan: unknown = null;
  private readonly store: Store;
  /**
   * What a live refresh pushed, by layer key (channels: key + "/" + channel), decoded when first read: a
   * layer's batch range comes from its `layers` entry, which the new revision's traits bring after the push.
   */
  private readonly pushed = new Map<string, Reply>();

  constructor(model: MessageModel, store: Store) {
    this.store = store;
    this.requester = new Requester(model, {
      revision: () => store.get("revision"),
      onBusy: (busy) => store.update({ kernelBusy: busy }),
      onPush: (reply) => this.takePush(reply),
    });
    this.loader = new LayerLoader({ requester: this.requester, metaOf: (name) => store.metaOf(name) });
  }

  peekLayer(key: LayerKey): LoadedLayer | undefined {
    const hit = this.loader.peek(key);
    if (hit !== undefined) return hit;
    const k = layerKey(key);
    const pushed = this.pushed.get(k);
    const meta = this.store.metaOf(key.layer);
    if (pushed === undefined || meta === undefined) return undefined;
    this.pushed.delete(k);
    const data = withBatchRange(decodeReply("layer", pushed, { layer: key.layer, sample: key.sample }), meta);
    this.loader.cache.set(k, data);
    return data;
  }

  /** Keeps a pushed layer or channel for the revision it belongs to; older pushes go. */
  private takePush(reply: Reply): void {
    const { revision, layer, sample, channel } = reply.meta;
    if (typeof revision !== "number" || typeof layer !== "string" || typeof sample !== "number") return;
    if (revision < this.store.get("revision")) return;
    for (const k of this.pushed.keys()) {
      if (Number(k.split("/")[0]) < revision) this.pushed.delete(k);
    }
    const k = layerKey({ revision, layer, sample });
    if (reply.kind === "layer") this.pushed.set(k, reply);
    else if (reply.kind === "channel" && typeof channel === "number") this.pushed.set(`${k}/${channel}`, reply);
  }

  loadLayer(key: LayerKey): Promise<LoadedLayer> {
    return this.loader.load(key);
  }

  prefetch(layers: readonly string[], sample: number, revision: number): void {
    this.loader.prefetch(layers, sample, revision);
  }

  clearLayers(): void {
    this.loader.clear();
  }

  fullRes(layer: string, sample: number, channels: number[]): Promise<LoadedLayer> {
    const meta = this.store.metaOf(layer);
    return this.requester
      .ask("layer", { layer, sample, channels }, { purpose: "fullres" })
      .then((data) => (meta === undefined ? data : withBatchRange(data, meta)));
  }

  channel(args: RequestArgs["channel"]): Promise<ChannelData> {
    const k = `${layerKey({ revision: this.store.get("revision"), layer: args.layer, sample: args.sample })}/${args.channel}`;
    const pushed = this.pushed.get(k);
    if (pushed !== undefined) {
      this.pushed.delete(k);
      try {
        return Promise.resolve(decodeReply("channel", pushed, args));
      } catch (e) {
        return Promise.reject(e);
      }
    }
    return this.requester.ask("channel", args, { purpose: "detail" });
  }

  input(sample: number, purpose: string): Promise<InputPicture> {
    return this.requester.ask("input", { sample }, { purpose });
  }

  peekGradcam(key: string): GradcamResult | undefined {
    return this.cams.get(key);
  }

  gradcam(key: string, args: RequestArgs["gradcam"]): Promise<GradcamResult> {
    const hit = this.cams.get(key);
    if (hit !== undefined) return Promise.resolve(hit);
    return this.requester.ask("gradcam", args, { purpose: "gradcam" }).then((result) => {
      this.cams.set(key, result);
      return result;
    });
  }

  clearGradcam(): void {
    this.cams.clear();
  }

  ablate(args: RequestArgs["ablate"]): Promise<AblateReply> {
    return this.requester.ask("ablate", args, { purpose: "ablate" });
  }

  examples(layer: string, channel: number): Promise<ExamplesResult> {
    const scan = this.store.get("scan_info");
    if (scan !== this.examplesScan) {
      this.examplesScan = scan;
      this.examplesCache.clear();
    }
    const key = JSON.stringify([layer, channel]);
    const hit = this.examplesCache.get(key);
    if (hit !== undefined) return Promise.resolve(hit);
    return this.requester.ask("examples", { layer, channel }, { purpose: "examples" }).then((result) => {
      if (this.store.get("scan_info") === scan) this.examplesCache.set(key, result);
      return result;
    });
  }

  useExample(index: number): Promise<{ index: number }> {
    // The kernel sends the new capture's traits (a new revision) before its reply, so the reply itself
    // reads as stale: that is the success it announces.
    return this.requester.ask("use_example", { index }, { purpose: "use_example" }).catch((e: unknown) => {
      if (isDropped(e) && e.reason === "stale") return { index };
      throw e;
    });
  }

  pictures(indices: readonly number[]): Promise<DatasetPicture[]> {
    const scan = this.store.get("scan_info");
    if (scan !== this.picturesScan) {
      this.picturesScan = scan;
      this.picturesCache.clear();
    }
    const key = JSON.stringify(indices);
    const hit = this.picturesCache.get(key);
    if (hit !== undefined) return Promise.resolve(hit);
    return this.requester.ask("pictures", { indices: [...indices] }, { purpose: "pictures" }).then((result) => {
      if (this.store.get("scan_info") === scan) this.picturesCache.set(key, result);
      return result;
    });
  }

  explain(args: RequestArgs["explain"]): Promise<Explanation> {
    return this.requester.ask("explain", args, { purpose: "explain" });
  }

  cancel(task: number | null): void {
    // The job's own request is answered "cancelled"; this reply only says whether there was one.
    this.requester.ask("cancel", { task }).catch(() => {});
  }

  destroy(): void {
    this.requester.dispose();
  }
}
