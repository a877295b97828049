/**
 * Decoded layers kept in the browser (an LRU bounded by bytes) and the loader that fills it: the shown
 * layer first, then its neighbours one at a time so a slider step is usually instant.
 *
 * @example
 *   const loader = new LayerLoader({ requester, metaOf });
 *   const data = loader.peek(key) ?? (await loader.load(key));
 *   loader.prefetch(["conv2", "conv0"], key.sample, key.revision);
 */
import type { LayerData } from "./grid/grid";
import {
  type LayerMeta,
  type LoadedLayer,
  type RequestArgs,
  RequestDropped,
  type Requester,
  withBatchRange,
} from "./protocol";

/** What a cached layer is keyed on: a new capture (revision) or another sample is different data. */
export interface LayerKey {
  revision: number;
  layer: string;
  sample: number;
}

/**
 * The cache's string key for a layer.
 *
 * @example
 *   layerKey({ revision: 2, layer: "conv1", sample: 0 }); // "2/0/conv1"
 */
export function layerKey(key: LayerKey): string {
  // The layer name goes last: it may contain any character, the two numbers cannot contain "/".
  return `${key.revision}/${key.sample}/${key.layer}`;
}

/**
 * Bytes a decoded layer holds (its typed arrays).
 *
 * @example
 *   layerBytes(data); // values + stats + flags
 */
export function layerBytes(data: LayerData): number {
  return data.values.byteLength + data.stats.byteLength + data.flags.byteLength;
}

/**
 * A least-recently-used map bounded by the total size of its values. An entry larger than the whole
 * budget is not kept (it would evict everything and then itself).
 *
 * @example
 *   const cache = new LruCache<LayerData>(64 << 20, layerBytes);
 *   cache.set("2/0/conv1", data);
 *   cache.get("2/0/conv1"); // data, now the most recently used
 */
export class LruCache<V> {
  private readonly entries = new Map<string, { value: V; bytes: number }>();
  private total = 0;

  constructor(
    readonly maxBytes: number,
    private readonly sizeOf: (value: V) => number,
  ) {}

  /** Total size of the entries held. */
  get bytes(): number {
    return this.total;
  }

  get size(): number {
    return this.entries.size;
  }

  has(key: string): boolean {
    return this.entries.has(key);
  }

  /** The value for a key, marking it most recently used. */
  get(key: string): V | undefined {
    const hit = this.entries.get(key);
    if (hit === undefined) return undefined;
    // Map iteration order is insertion order: re-inserting moves the key to the young end.
    this.entries.delete(key);
    this.entries.set(key, hit);
    return hit.value;
  }

  set(key: string, value: V): void {
    this.delete(key);
    const bytes = this.sizeOf(value);
    if (bytes > this.maxBytes) return;
    this.entries.set(key, { value, bytes });
    this.total += bytes;
    for (const [oldKey, old] of this.entries) {
      if (this.total <= this.maxBytes) break;
      this.entries.delete(oldKey);
      this.total -= old.bytes;
    }
  }

  delete(key: string): void {
    const hit = this.entries.get(key);
    if (hit === undefined) return;
    this.entries.delete(key);
    this.total -= hit.bytes;
  }

  clear(): void {
    this.entries.clear();
    this.total = 0;
  }
}

export interface LayerLoaderOptions {
  requester: Requester;
  /** The `layers` trait entry of a layer (for its batch range); undefined for a layer no longer listed. */
  metaOf: (layer: string) => LayerMeta | undefined;
  /** Cache budget in bytes (default 64 MiB: a dozen layers at the kernel's default 4 M values each). */
  maxBytes?: number;
  /** Passed to the kernel as `max_values` (it downsamples larger layers). */
  maxValues?: number;
}

/**
 * Loads layers through the requester into an LRU cache. The shown layer uses the "layer" purpose (latest
 * wins), prefetches the "prefetch" purpose, and a prefetch only starts while no shown layer is pending.
 *
 * @example
 *   const data = await loader.load({ revision, layer: "conv1", sample: 0 });
 *   loader.prefetch(["conv2"], 0, revision);
 */
export class LayerLoader {
  readonly cache: LruCache<LoadedLayer>;
  private readonly options: LayerLoaderOptions;
  private readonly inflight = new Map<string, Promise<LoadedLayer>>();
  private shownPending = 0;
  private prefetching = false;
  private queue: LayerKey[] = [];
  /** Bumped by clear(): replies to requests sent before it are neither cached nor returned. */
  private generation = 0;
  /** The inflight entry of the latest "layer" fetch: a newer one supersedes it at the requester. */
  private shownFetch: { k: string; promise: Promise<LoadedLayer> } | null = null;

  constructor(options: LayerLoaderOptions) {
    this.options = options;
    this.cache = new LruCache<LoadedLayer>(options.maxBytes ?? 64 * 1024 * 1024, layerBytes);
  }

  /** The cached layer, if any (synchronous: a cached layer shows without waiting a frame). */
  peek(key: LayerKey): LoadedLayer | undefined {
    return this.cache.get(layerKey(key));
  }

  /**
   * The layer to show. Resolves from the cache, joins a prefetch of the same layer already at the
   * kernel, or requests it; rejects with RequestDropped when a newer `load` replaced it.
   *
   * @example
   *   loader.load(key).then(grid.setLayer, (e) => isDropped(e) || showError(e));
   */
  load(key: LayerKey): Promise<LoadedLayer> {
    const hit = this.peek(key);
    if (hit !== undefined) return Promise.resolve(hit);
    const joined = this.inflight.get(layerKey(key));
    const promise = joined ?? this.fetch(key, "layer");
    this.shownPending++;
    const done = (): void => {
      this.shownPending--;
      this.pump();
    };
    promise.then(done, done);
    return promise;
  }

  /**
   * Queues layers to fetch in the background, in order, one at a time, after the shown one. Replaces
   * the previous queue (the user moved on); layers already cached are skipped.
   *
   * @example
   *   loader.prefetch([next, previous], sample, revision);
   */
  prefetch(layers: readonly string[], sample: number, revision: number): void {
    this.queue = layers.map((layer) => ({ layer, sample, revision }));
    this.pump();
  }

  /** Forgets every cached layer, queued prefetch and request in flight (a new revision or group pair). */
  clear(): void {
    this.cache.clear();
    this.queue = [];
    this.inflight.clear();
    this.shownFetch = null;
    this.generation++;
  }

  private pump(): void {
    if (this.prefetching || this.shownPending > 0) return;
    let next = this.queue.shift();
    while (next !== undefined) {
      const k = layerKey(next);
      if (!this.cache.has(k) && !this.inflight.has(k) && this.options.metaOf(next.layer) !== undefined) break;
      next = this.queue.shift();
    }
    if (next === undefined) return;
    this.prefetching = true;
    const done = (): void => {
      this.prefetching = false;
      this.pump();
    };
    // A failed prefetch is not shown: the user may never ask for that layer, and asking does retry it.
    this.fetch(next, "prefetch").then(done, done);
  }

  private fetch(key: LayerKey, purpose: "layer" | "prefetch"): Promise<LoadedLayer> {
    const meta = this.options.metaOf(key.layer);
    if (meta === undefined) {
      return Promise.reject(new Error(`layer "${key.layer}" is not among the captured layers`));
    }
    const k = layerKey(key);
    const args: RequestArgs["layer"] = { layer: key.layer, sample: key.sample };
    if (this.options.maxValues !== undefined) args.max_values = this.options.maxValues;
    const generation = this.generation;
    if (purpose === "layer" && this.shownFetch !== null) {
      // The requester drops the previous shown fetch now; its entry must go now too, or a load of that
      // layer in this same task would join a promise that is about to reject.
      if (this.inflight.get(this.shownFetch.k) === this.shownFetch.promise) this.inflight.delete(this.shownFetch.k);
    }
    const promise = this.options.requester.ask("layer", args, { purpose }).then((reply) => {
      // Computed before a clear (another group pair): neither cached nor shown.
      if (generation !== this.generation) throw new RequestDropped("stale");
      const data = withBatchRange(reply, meta);
      this.cache.set(k, data);
      return data;
    });
    this.inflight.set(k, promise);
    if (purpose === "layer") this.shownFetch = { k, promise };
    const forget = (): void => {
      if (this.inflight.get(k) === promise) this.inflight.delete(k);
    };
    promise.then(forget, forget);
    return promise;
  }
}
