import { describe, expect, it } from "vitest";
import type { LoadedLayer, Traits } from "./protocol";
import { type Changed, type Key, Store, type StoreModel } from "./store";
import { layerMeta } from "./testing/fixtures";

/** Backbone's order of events: `change:<key>` for each key of one set, then one `change`. */
class FakeModel implements StoreModel {
  attrs: Partial<Traits> = {};
  handlers = new Map<string, Set<() => void>>();
  saves = 0;
  sets: string[] = [];
  get<K extends keyof Traits>(key: K): Traits[K] {
    return this.attrs[key] as Traits[K];
  }
  set<K extends keyof Traits>(key: K, value: Traits[K]): void {
    this.sets.push(key);
    this.kernelUpdate({ [key]: value });
  }
  /** Sets several traits in one go, as a state message from the kernel does. */
  kernelUpdate(values: Partial<Traits>, fireChange = true): void {
    Object.assign(this.attrs, values);
    for (const key of Object.keys(values)) this.fire(`change:${key}`);
    if (fireChange) this.fire("change");
  }
  save_changes(): void {
    this.saves++;
  }
  on(event: string, cb: () => void): void {
    if (!this.handlers.has(event)) this.handlers.set(event, new Set());
    this.handlers.get(event)?.add(cb);
  }
  off(event: string, cb: () => void): void {
    this.handlers.get(event)?.delete(cb);
  }
  fire(event: string): void {
    for (const h of [...(this.handlers.get(event) ?? [])]) h();
  }
  listenerCount(): number {
    let n = 0;
    for (const set of this.handlers.values()) n += set.size;
    return n;
  }
}

function recorder(store: Store): { batches: Key[][]; stop: () => void } {
  const batches: Key[][] = [];
  const stop = store.subscribe((changed: Changed) => batches.push([...changed].sort()));
  return { batches, stop };
}

describe("Store", () => {
  it("delivers one kernel update's traits as one batch", () => {
    const model = new FakeModel();
    const store = new Store(model);
    const { batches } = recorder(store);
    model.kernelUpdate({ layer: "conv2", revision: 3, sample: 1 });
    expect(batches).toEqual([["layer", "revision", "sample"]]);
    expect(store.get("layer")).toBe("conv2");
  });

  it("delivers a change a microtask later when the host fires no `change` event", async () => {
    const model = new FakeModel();
    const store = new Store(model);
    const { batches } = recorder(store);
    model.kernelUpdate({ layer: "a" }, false);
    model.kernelUpdate({ sample: 2 }, false);
    expect(batches).toEqual([]);
    await Promise.resolve();
    expect(batches).toEqual([["layer", "sample"]]);
  });

  it("writes traits in one batch with one save, and can leave out the save and the echo", () => {
    const model = new FakeModel();
    const store = new Store(model);
    const { batches } = recorder(store);
    store.set({ colormap: "diverging", symmetric: true });
    expect(model.attrs).toMatchObject({ colormap: "diverging", symmetric: true });
    expect(model.saves).toBe(1);
    expect(batches).toEqual([["colormap", "symmetric"]]);
    store.set({ view: { zoom: 2, x: 0.5, y: 0.5 } }, { save: false, echo: false });
    expect(model.attrs.view).toEqual({ zoom: 2, x: 0.5, y: 0.5 });
    expect(model.saves).toBe(1);
    expect(batches).toHaveLength(1);
    store.save();
    expect(model.saves).toBe(2);
  });

  it("keeps UI-only state out of the model and reports only values that changed", () => {
    const model = new FakeModel();
    const store = new Store(model);
    const { batches } = recorder(store);
    store.update({ hovered: 3, cursor: 3 });
    store.update({ hovered: 3 });
    expect(store.get("hovered")).toBe(3);
    expect(model.sets).toEqual([]);
    expect(batches).toEqual([["cursor", "hovered"]]);
    store.touch("hovered");
    expect(batches.at(-1)).toEqual(["hovered"]);
  });

  it("groups everything changed inside batch() into one delivery", () => {
    const store = new Store(new FakeModel());
    const { batches } = recorder(store);
    store.batch(() => {
      store.update({ preview: null, drawn: true });
      store.set({ layer: "x" });
      store.update({ hovered: 1 });
    });
    expect(batches).toEqual([["drawn", "hovered", "layer"]]);
  });

  it("never calls a subscriber re-entrantly: what it changes comes as the next round", () => {
    const store = new Store(new FakeModel());
    const seen: string[] = [];
    let depth = 0;
    store.subscribe((changed) => {
      depth++;
      seen.push(`${[...changed].join(",")}@${depth}`);
      if (changed.has("layer")) store.update({ drawn: false, layerError: "nope" });
      depth--;
    });
    const other: string[] = [];
    store.subscribe((changed) => other.push([...changed].join(",")));
    store.set({ layer: "x" });
    expect(seen).toEqual(["layer@1", "layerError@1"]);
    expect(other).toEqual(["layer", "layerError"]);
  });

  it("stops a subscriber that unsubscribes, and stops everything on destroy", () => {
    const model = new FakeModel();
    const store = new Store(model);
    const a = recorder(store);
    const b = recorder(store);
    expect(model.listenerCount()).toBeGreaterThan(0);
    a.stop();
    model.kernelUpdate({ sample: 1 });
    expect(a.batches).toEqual([]);
    expect(b.batches).toEqual([["sample"]]);
    store.destroy();
    expect(model.listenerCount()).toBe(0);
    model.kernelUpdate({ sample: 2 });
    store.update({ hovered: 4 });
    expect(b.batches).toEqual([["sample"]]);
  });

  it("drops changes queued for a microtask when destroyed first", async () => {
    const model = new FakeModel();
    const store = new Store(model);
    const { batches } = recorder(store);
    model.kernelUpdate({ layer: "a" }, false);
    store.destroy();
    await Promise.resolve();
    expect(batches).toEqual([]);
  });

  it("reports every key once to draw the whole state", () => {
    const store = new Store(new FakeModel());
    const { batches } = recorder(store);
    store.notifyAll();
    expect(batches).toHaveLength(1);
    expect(batches[0]).toEqual(expect.arrayContaining(["layers", "layer", "shown", "kernelGone", "theme"]));
  });

  it("gives defaults for traits an older kernel does not send, and hears of a disconnect", () => {
    const model = new FakeModel();
    const store = new Store(model);
    expect(store.get("layers")).toEqual([]);
    expect(store.get("cam_methods")).toEqual(["gradcam"]);
    expect(store.get("selected")).toEqual([]);
    expect(store.get("ablation")).toBeNull();
    const { batches } = recorder(store);
    model.fire("comm_live_update");
    expect(store.get("kernelGone")).toBe(true);
    expect(batches).toEqual([["kernelGone"]]);
  });

  it("derives the global range, the current layer key, the shown layer and the error", () => {
    const model = new FakeModel();
    model.attrs = {
      layers: [layerMeta("a", { min: -2, max: 1 }), layerMeta("b", { min: 0, max: 5, post: "a" })],
      layer: "b",
      sample: 0,
      revision: 7,
    };
    const store = new Store(model);
    expect(store.globalRange()).toEqual([-2, 5]);
    expect(store.globalRange()).toBe(store.globalRange());
    expect(store.layerKey()).toEqual({ revision: 7, layer: "b", sample: 0 });
    expect(store.partnerOf(store.metaOf("b"))?.name).toBe("a");
    const shown = { layer: "b" } as LoadedLayer;
    store.update({ shown, shownKey: "7/0/b" });
    expect(store.shownCurrent()).toBe(shown);
    model.kernelUpdate({ sample: 1 });
    expect(store.shownCurrent()).toBeNull();
    expect(store.error()).toBe("");
    model.kernelUpdate({ status: { state: "error", message: "" } });
    expect(store.error()).toBe("the kernel reported an error");
    store.update({ layerError: "bad layer" });
    expect(store.error()).toBe("bad layer");
  });
});
