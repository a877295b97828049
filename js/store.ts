/**
 * The view's one state store: the synced traits (read from and written to the anywidget model: this is
 * the only module that calls `model.get`), UI-only state that the kernel never sees, and values derived
 * from both. Subscribers hear of changes in batches: every key that changed during one model update, one
 * `set`/`update` call or one `batch`, delivered once, after the change, never re-entrantly (a subscriber
 * that changes state causes a next round, not a nested call).
 *
 * @example
 *   const store = new Store(model);
 *   const stop = store.subscribe((changed) => {
 *     if (changed.has("layer") || changed.has("shown")) header.update(store.get("layer"));
 *   });
 *   store.set({ colormap: "magma", symmetric: true }); // one batch, one save_changes
 *   store.update({ hovered: 3 });                      // UI-only: never reaches the kernel
 */
import { type LayerKey, layerKey } from "./cache";
import type { LayerMeta, LoadedLayer, Traits } from "./protocol";

/** What this view knows that the kernel does not. */
export interface UiState {
  /** The layer under the slider's thumb while dragging, not yet sent to the model. */
  preview: string | null;
  /** The layer the grid holds (it lags the `layer` trait while the next one loads), and its cache key. */
  shown: LoadedLayer | null;
  shownKey: string;
  /** The grid reported drawing `shown`. */
  drawn: boolean;
  /** Why the current layer cannot be shown ("" when it can). */
  layerError: string;
  /** Set once when the grid cannot start; unlike layerError no layer change clears it. */
  gridError: string;
  /** A reply is overdue: the kernel is running a cell. */
  kernelBusy: boolean;
  /** ipywidgets disconnected the widget (kernel restarted or stopped): nothing will be answered. */
  kernelGone: boolean;
  /** The tile under the pointer. */
  hovered: number | null;
  /** The tile Enter opens: last hovered, clicked or stepped to. */
  cursor: number | null;
  /** The Grad-CAM map that arrived last (its cam key; the map is in the data source's cache). */
  camReady: string;
  /** The last Grad-CAM request that failed (or was cancelled: `cancelled`): its cam key and the reason. */
  camError: { key: string; text: string; cancelled?: boolean } | null;
  /** Bumped on every host theme switch (canvas drawings re-read their colours). */
  theme: number;
}

export type State = Traits & UiState;
export type Key = keyof State;
export type Changed = ReadonlySet<Key>;

/** The part of an anywidget model the store needs (AnyModel<Traits> fits; tests pass a fake). */
export interface StoreModel {
  get<K extends keyof Traits>(key: K): Traits[K];
  set<K extends keyof Traits>(key: K, value: Traits[K]): void;
  save_changes(): void;
  on(event: string, callback: () => void): void;
  off(event: string, callback: () => void): void;
}

/**
 * Every synced trait with the value the view assumes while the kernel has not sent one (older kernels
 * lack the newer traits). The store listens to exactly these.
 */
const TRAIT_DEFAULTS: Traits = {
  layers: [],
  layer: "",
  channel: null,
  sample: 0,
  num_samples: 1,
  colormap: "gray",
  scale: "channel",
  symmetric: false,
  revision: 0,
  status: { state: "ready", message: "" },
  predictions: [],
  sort: "index",
  top_k: 0,
  selected: [],
  height: 0,
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

const TRAITS = Object.keys(TRAIT_DEFAULTS) as (keyof Traits)[];

const UI_DEFAULTS: UiState = {
  preview: null,
  shown: null,
  shownKey: "",
  drawn: false,
  layerError: "",
  gridError: "",
  kernelBusy: false,
  kernelGone: false,
  hovered: null,
  cursor: null,
  camReady: "",
  camError: null,
  theme: 0,
};

/** Every key, for a subscriber's first update. */
export const ALL_KEYS: Changed = new Set<Key>([...TRAITS, ...(Object.keys(UI_DEFAULTS) as (keyof UiState)[])]);

/** More rounds than this in one flush means two subscribers keep changing state for each other. */
const MAX_ROUNDS = 50;

export interface SetOptions {
  /** Call `save_changes` (default true); the view trait is saved on its own schedule. */
  save?: boolean;
  /** Tell this store's subscribers (default true); false for a write whose effect the writer already shows. */
  echo?: boolean;
}

export class Store {
  private readonly model: StoreModel;
  private readonly ui: UiState = { ...UI_DEFAULTS };
  private readonly subscribers = new Set<(changed: Changed) => void>();
  private readonly listeners: [string, () => void][] = [];
  private pending = new Set<Key>();
  private depth = 0;
  private flushing = false;
  private scheduled = false;
  private muted = false;
  private destroyed = false;
  private rangeOf: { layers: readonly LayerMeta[]; range: [number, number] } | null = null;

  constructor(model: StoreModel) {
    this.model = model;
    for (const name of TRAITS) {
      this.listen(`change:${name}`, () => {
        if (!this.muted) this.mark(name);
      });
    }
    // Backbone fires `change` once after all `change:<trait>` events of one update: its keys are one batch.
    this.listen("change", () => this.flush());
    this.listen("comm_live_update", () => this.update({ kernelGone: true }));
  }

  /** A trait (its default while the kernel has not sent it) or a UI-only value. */
  get<K extends Key>(key: K): State[K] {
    if (key in this.ui) return this.ui[key as keyof UiState] as State[K];
    const value = this.model.get(key as keyof Traits);
    return (value ?? TRAIT_DEFAULTS[key as keyof Traits]) as State[K];
  }

  /**
   * Writes traits to the model (one batch, one `save_changes`).
   *
   * @example
   *   store.set({ layer: "conv1" });
   *   store.set({ view }, { save: false, echo: false }); // zoom: linked views follow, the kernel later
   */
  set(values: Partial<Traits>, { save = true, echo = true }: SetOptions = {}): void {
    this.batch(() => {
      this.muted = !echo;
      try {
        for (const [name, value] of Object.entries(values) as [keyof Traits, never][]) this.model.set(name, value);
      } finally {
        this.muted = false;
      }
      if (save) this.model.save_changes();
    });
  }

  /** Sends the traits set without saving (see {@link set}'s `save`) to the kernel. */
  save(): void {
    this.model.save_changes();
  }

  /** Changes UI-only state; keys whose value is the same (===) are not reported. */
  update(values: Partial<UiState>): void {
    this.batch(() => {
      for (const [name, value] of Object.entries(values) as [keyof UiState, never][]) {
        if (this.ui[name] === value) continue;
        this.ui[name] = value;
        this.mark(name);
      }
    });
  }

  /** Reports keys as changed though their value is the same object (a cached layer presented again). */
  touch(...keys: Key[]): void {
    this.batch(() => {
      for (const key of keys) this.mark(key);
    });
  }

  /** Runs `fn`; what it changes reaches subscribers once, after it returns. */
  batch(fn: () => void): void {
    this.depth++;
    try {
      fn();
    } finally {
      this.depth--;
    }
    this.flush();
  }

  /**
   * Calls `fn(changed)` after every batch of changes; returns the function that stops it.
   *
   * @example
   *   const stop = store.subscribe((changed) => changed.has("sample") && redraw());
   */
  subscribe(fn: (changed: Changed) => void): () => void {
    this.subscribers.add(fn);
    return () => this.subscribers.delete(fn);
  }

  /** Reports every key as changed: each subscriber draws the whole current state once. */
  notifyAll(): void {
    for (const key of ALL_KEYS) this.pending.add(key);
    this.flush();
  }

  /** Stops listening to the model and drops every subscriber. */
  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    for (const [event, fn] of this.listeners) this.model.off(event, fn);
    this.listeners.length = 0;
    this.subscribers.clear();
    this.pending.clear();
  }

  // --- derived values -------------------------------------------------------------------------------

  /** The `layers` entry of a layer; undefined for a name not captured. */
  metaOf(name: string): LayerMeta | undefined {
    return this.get("layers").find((l) => l.name === name);
  }

  /** The activation partner (`post` or `pre`) of a layer. */
  partnerOf(meta: LayerMeta | undefined): LayerMeta | undefined {
    const name = meta?.post ?? meta?.pre;
    return name == null ? undefined : this.metaOf(name);
  }

  /** The finite range over every captured layer (for the "global" scale); changes with `layers`. */
  globalRange(): [number, number] {
    const layers = this.get("layers");
    if (this.rangeOf?.layers !== layers) this.rangeOf = { layers, range: finiteRange(layers) };
    return this.rangeOf.range;
  }

  /** What the view should show now: revision, layer and sample. */
  layerKey(): LayerKey {
    return { revision: this.get("revision"), layer: this.get("layer"), sample: this.get("sample") };
  }

  /** The grid's layer when it is the current one (not a previous layer, sample or capture). */
  shownCurrent(): LoadedLayer | null {
    const shown = this.get("shown");
    return shown !== null && this.get("shownKey") === layerKey(this.layerKey()) ? shown : null;
  }

  /** What stops the view: the grid could not start, the layer cannot be shown, or the kernel says so. */
  error(): string {
    const status = this.get("status");
    const kernelError = status.state === "error" ? status.message || "the kernel reported an error" : "";
    return this.get("gridError") || this.get("layerError") || kernelError;
  }

  /** The Grad-CAM cache key of a layer key under the current class and method. */
  camKey(key: string): string {
    return `${this.get("target") ?? "predicted"}|${this.get("cam_method")}|${key}`;
  }

  /** Grad-CAM is needed: the panel is open or the tiles are sorted by its weights. */
  camWanted(): boolean {
    return this.get("gradcam") || this.get("sort") === "gradcam";
  }

  // --- internals ------------------------------------------------------------------------------------

  private listen(event: string, fn: () => void): void {
    this.model.on(event, fn);
    this.listeners.push([event, fn]);
  }

  private mark(key: Key): void {
    this.pending.add(key);
    if (this.depth > 0 || this.flushing || this.scheduled) return;
    // A host that fires no `change` after `change:<trait>` still gets its update, a microtask later.
    this.scheduled = true;
    queueMicrotask(() => {
      this.scheduled = false;
      this.flush();
    });
  }

  private flush(): void {
    if (this.depth > 0 || this.flushing || this.destroyed) return;
    this.flushing = true;
    try {
      for (let round = 0; this.pending.size > 0; round++) {
        if (round >= MAX_ROUNDS) throw new Error(`store: state kept changing (${[...this.pending].join(", ")})`);
        const changed: Changed = this.pending;
        this.pending = new Set();
        for (const fn of [...this.subscribers]) {
          if (this.destroyed) return;
          fn(changed);
        }
      }
    } finally {
      this.flushing = false;
    }
  }
}

function finiteRange(layers: readonly LayerMeta[]): [number, number] {
  let lo = Infinity;
  let hi = -Infinity;
  for (const l of layers) {
    if (Number.isFinite(l.min)) lo = Math.min(lo, l.min);
    if (Number.isFinite(l.max)) hi = Math.max(hi, l.max);
  }
  return lo <= hi ? [lo, hi] : [0, 0];
}
