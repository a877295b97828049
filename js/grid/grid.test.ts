/// <reference types="vite/client" />
import { afterEach, describe, expect, it, vi } from "vitest";
import { userEvent } from "vitest/browser";
import { colormapLUT, NAN_COLOR } from "../colormaps";
import pageCss from "../style.css?raw";
import { createGrid, type Grid, type LayerData } from "./grid";
import gridCss from "./grid.css?raw";
import { LABEL_MIN_FONT_PX } from "./overlay";

const grids: Grid[] = [];
afterEach(() => {
  for (const g of grids.splice(0)) g.destroy();
  vi.restoreAllMocks();
  document.body.replaceChildren();
});

function container(width = 400): HTMLElement {
  const el = document.createElement("div");
  el.style.width = `${width}px`;
  document.body.append(el);
  return el;
}

function make(width = 400, opts: Parameters<typeof createGrid>[1] = {}): Grid {
  const g = createGrid(container(width), opts);
  grids.push(g);
  return g;
}

/**
 * A layer of C channels of H×W zeros with one peak per channel at (c % H, (2c) % W), values q on
 * [0, 1] per channel. Channel 1 is flagged dead.
 */
function peakLayer(C: number, H: number, W: number, name = "conv1"): LayerData {
  const values = new Uint8Array(C * H * W);
  const stats = new Float32Array(6 * C);
  const flags = new Uint8Array(C);
  for (let c = 0; c < C; c++) {
    values[c * H * W + (c % H) * W + ((2 * c) % W)] = 254;
    stats.set([0, 1, 1 / (H * W), 1 - 1 / (H * W), 0, 0], 6 * c);
  }
  if (C > 1) flags[1] = 1;
  return {
    layer: name,
    channels: C,
    height: H,
    width: W,
    fullHeight: H,
    fullWidth: W,
    downsample: 1,
    values,
    stats,
    flags,
    layerMin: 0,
    layerMax: 1,
  };
}

const drawn = (g: Grid): Promise<string> => new Promise((resolve) => g.onDrawn(resolve));
/** Resolves after the grid's pending frame: rAF callbacks run in the order they were requested. */
const nextFrame = (): Promise<void> => new Promise((resolve) => requestAnimationFrame(() => resolve()));

function pictureCanvas(g: Grid): HTMLCanvasElement {
  const c = [...g.element.querySelectorAll<HTMLCanvasElement>("canvas.fm-grid-picture")].find((x) => !x.hidden);
  if (c === undefined) throw new Error("no visible picture canvas");
  return c;
}

/** RGBA at a client point of the visible picture; must be called inside the frame (WebGL buffers are not kept). */
function pixelAt(g: Grid, clientX: number, clientY: number): number[] {
  const canvas = pictureCanvas(g);
  const rect = canvas.getBoundingClientRect();
  const x = Math.floor((clientX - rect.left) * (canvas.width / rect.width));
  const y = Math.floor((clientY - rect.top) * (canvas.height / rect.height));
  const gl = g.backend === "webgl2" ? canvas.getContext("webgl2") : null;
  if (gl !== null) {
    const out = new Uint8Array(4);
    gl.readPixels(x, canvas.height - 1 - y, 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, out);
    return Array.from(out);
  }
  return Array.from(canvas.getContext("2d")!.getImageData(x, y, 1, 1).data);
}

/** Client point at the centre of data pixel (row, col) of a channel's tile. */
function pixelCentre(g: Grid, channel: number, row: number, col: number, H: number, W: number): [number, number] {
  const r = g.tileClientRect(channel)!;
  return [r.left + ((col + 0.5) * r.width) / W, r.top + ((row + 0.5) * r.height) / H];
}

/** Checks, inside the next frame, that each channel's peak is white on screen and hit-tests back to itself. */
async function expectPeaks(
  g: Grid,
  C: number,
  H: number,
  W: number,
  top: number[] = [255, 255, 255, 255],
): Promise<void> {
  const seen: number[][] = [];
  // A WebGL drawing buffer is only readable in the frame that drew it: ask for a frame, read right after.
  g.setOptions({});
  await new Promise<void>((resolve) =>
    requestAnimationFrame(() => {
      for (let c = 0; c < C; c++) seen.push(pixelAt(g, ...pixelCentre(g, c, c % H, (2 * c) % W, H, W)));
      resolve();
    }),
  );
  for (let c = 0; c < C; c++) {
    expect(seen[c]).toEqual(top);
    const hit = g.hitTest(...pixelCentre(g, c, c % H, (2 * c) % W, H, W));
    expect(hit).toMatchObject({ channel: c, row: c % H, col: (2 * c) % W, value: 1 });
  }
}

describe("createGrid", () => {
  it("lays out every channel, labels the canvas and draws with WebGL2", async () => {
    const g = make(400);
    expect(g.backend).toBe("webgl2");
    expect(g.canvas.getAttribute("aria-label")).toBe("Feature maps");
    const done = drawn(g);
    g.setLayer(peakLayer(6, 8, 8));
    expect(await done).toBe("conv1");
    expect([g.canvas.dataset.columns, g.canvas.dataset.rows]).toEqual(["3", "2"]);
    expect(g.canvas.getBoundingClientRect().width).toBe(400);
    expect(g.canvas.width).toBe(Math.round(400 * devicePixelRatio));
    await expectPeaks(g, 6, 8, 8);
  });

  it("reports a layer drawn only once it is visible", async () => {
    const box = container(400);
    box.style.display = "none";
    const g = createGrid(box, {});
    grids.push(g);
    const names: string[] = [];
    g.onDrawn((name) => names.push(name));
    g.setLayer(peakLayer(4, 8, 8, "hidden.layer"));
    await nextFrame();
    await nextFrame();
    expect(names).toEqual([]);
    const done = drawn(g);
    box.style.display = "block";
    expect(await done).toBe("hidden.layer");
    expect(g.canvas.dataset.columns).toBe("2");
  });

  it("re-draws on colormap, scale and order changes without re-uploading values", async () => {
    const uploads = [
      vi.spyOn(WebGL2RenderingContext.prototype, "texImage3D"),
      vi.spyOn(WebGL2RenderingContext.prototype, "texSubImage3D"),
    ];
    const draws = vi.spyOn(WebGL2RenderingContext.prototype, "drawArraysInstanced");
    const g = make(400);
    g.setLayer(peakLayer(6, 8, 8));
    await nextFrame();
    const uploaded = uploads.map((s) => s.mock.calls.length);
    expect(uploaded).toEqual([1, 0]);
    expect(draws).toHaveBeenCalledTimes(1);

    g.setOptions({ colormap: "magma" });
    const lut = colormapLUT("magma");
    await expectPeaks(g, 6, 8, 8, [...lut.subarray(1020, 1024)]);
    g.setOptions({ scope: "layer", symmetric: true, order: Int32Array.from([5, 4, 3, 2, 1, 0]) });
    await nextFrame();
    expect(g.tileClientRect(5)!.left).toBeLessThan(g.tileClientRect(0)!.left);
    // Symmetric [-1, 1]: the peak value 1 is still the top of the map.
    await expectPeaks(g, 6, 8, 8, [...lut.subarray(1020, 1024)]);
    expect(uploads.map((s) => s.mock.calls.length)).toEqual(uploaded);
    expect(draws.mock.calls.length).toBeGreaterThanOrEqual(3);
  });

  it("shows top-k tiles only, in the given order", async () => {
    const g = make(400, { order: Int32Array.from([3, 0]) });
    g.setLayer(peakLayer(6, 8, 8));
    await nextFrame();
    expect([g.canvas.dataset.columns, g.canvas.dataset.rows]).toEqual(["2", "1"]);
    expect(g.tileClientRect(1)).toBeNull();
    const r = g.tileClientRect(3)!;
    expect(g.hitTest(r.left + 1, r.top + 1)).toMatchObject({ channel: 3, tileIndex: 0 });
  });

  it("renders a 2048-channel layer", async () => {
    const g = make(700);
    g.setLayer(peakLayer(2048, 4, 4));
    await nextFrame();
    expect(Number(g.canvas.dataset.columns) * Number(g.canvas.dataset.rows)).toBeGreaterThanOrEqual(2048);
    expect(g.tileClientRect(2047)).not.toBeNull();
    await expectPeaks(g, 2048, 4, 4);
  });

  it("zooms around the pointer with the wheel, pans by dragging and resets on double-click", async () => {
    const g = make(400);
    g.setLayer(peakLayer(4, 8, 8));
    await nextFrame();
    const before = g.tileClientRect(3)!;
    const rect = g.canvas.getBoundingClientRect();
    const centre: [number, number] = [rect.left + rect.width / 2, rect.top + rect.height / 2];
    const under = g.hitTest(...centre);
    await userEvent.wheel(g.canvas, { delta: { y: -200 } });
    await nextFrame();
    const zoomed = g.tileClientRect(3)!;
    expect(zoomed.width).toBeGreaterThan(before.width * 1.2);
    expect(g.hitTest(...centre)).toEqual(under);

    await userEvent.dragAndDrop(g.canvas, g.canvas, {
      sourcePosition: { x: 200, y: 100 },
      targetPosition: { x: 230, y: 120 },
    } as object);
    await nextFrame();
    const panned = g.tileClientRect(3)!;
    expect(panned.left - zoomed.left).toBeCloseTo(30, 0);
    expect(panned.top - zoomed.top).toBeCloseTo(20, 0);

    await userEvent.dblClick(g.canvas);
    await nextFrame();
    expect(g.tileClientRect(3)).toEqual(before);
  });

  it("a double-click resets the zoom and undoes its first click; single clicks act at once", async () => {
    const g = make(400);
    const events: string[] = [];
    g.onClick((h) => {
      events.push(`click ${h.channel}`);
      return () => events.push(`undo ${h.channel}`);
    });
    g.setLayer(peakLayer(4, 8, 8));
    await nextFrame();
    const r = g.tileClientRect(2)!;
    const cr = g.canvas.getBoundingClientRect();
    const position = { x: r.left - cr.left + r.width / 2, y: r.top - cr.top + r.height / 2 };
    await userEvent.click(g.canvas, { position } as object);
    expect(events).toEqual(["click 2"]);
    g.zoomBy(2);
    await nextFrame();
    events.length = 0;
    await userEvent.dblClick(g.canvas, { position } as object);
    await nextFrame();
    // The second click of the pair is not a click; the first is undone; the zoom is back to 1.
    expect(events).toEqual(["click 2", "undo 2"]);
    expect(g.getView().zoom).toBe(1);
  });

  it("prints pixel values once pixels are large", async () => {
    const g = make(400);
    const layer = peakLayer(1, 4, 4);
    g.setLayer(layer);
    await nextFrame();
    // 400 px / 4 pixels = 100 px per pixel: the values are written in the overlay.
    const ctx = g.canvas.getContext("2d")!;
    const spy = vi.spyOn(ctx, "fillText");
    g.setOptions({ colormap: "gray" });
    await nextFrame();
    const texts = spy.mock.calls.map((c) => c[0]);
    expect(texts.filter((t) => t === "1")).toHaveLength(1);
    expect(texts.filter((t) => t === "0")).toHaveLength(16 - 1 + 1); // 15 zeros, plus the channel label "0"
  });

  it("shows a text-only tooltip with stats on hover, marking dead channels", async () => {
    const g = make(400);
    const hovers: (number | null)[] = [];
    g.onHover((h) => hovers.push(h?.channel ?? null));
    g.setLayer(peakLayer(4, 8, 8));
    await nextFrame();
    const r = g.tileClientRect(1)!;
    const cr = g.canvas.getBoundingClientRect();
    await userEvent.hover(g.canvas, { position: { x: r.left - cr.left + 5, y: r.top - cr.top + 5 } } as object);
    await nextFrame();
    const tip = g.element.querySelector<HTMLElement>(".fm-grid-tooltip")!;
    expect(tip.hidden).toBe(false);
    expect(tip.textContent).toContain("Channel 1 · dead");
    expect(tip.textContent).toContain("zeros 98.4%");
    expect(tip.querySelectorAll("*").length).toBe(tip.children.length);
    expect(hovers.at(-1)).toBe(1);
  });

  it("marks the channels of the last ablation on their tiles and in the tooltip", async () => {
    const g = make(400);
    g.setLayer(peakLayer(4, 8, 8));
    await nextFrame();
    const ctx = g.canvas.getContext("2d")!;
    const text = vi.spyOn(ctx, "fillText");
    const outline = vi.spyOn(ctx, "strokeRect");
    g.setOptions({ ablated: new Set([2]) });
    await nextFrame();
    expect(text.mock.calls.filter((c) => c[0] === "zeroed")).toHaveLength(1);
    // The dashed outline sits inside channel 2's tile, 3 px in from its edges.
    const r = g.tileClientRect(2)!;
    const cr = g.canvas.getBoundingClientRect();
    const inset = outline.mock.calls.find(
      ([x, y]) => Math.abs(x - (r.left - cr.left + 3)) < 0.5 && Math.abs(y - (r.top - cr.top + 3)) < 0.5,
    );
    expect(inset).toBeDefined();
    await userEvent.hover(g.canvas, { position: { x: r.left - cr.left + 5, y: r.top - cr.top + 5 } } as object);
    await nextFrame();
    const tip = g.element.querySelector<HTMLElement>(".fm-grid-tooltip")!;
    expect(tip.textContent).toContain("Zeroed in the last ablation");
    text.mockClear();
    g.setOptions({ ablated: new Set() });
    await nextFrame();
    expect(text.mock.calls.filter((c) => c[0] === "zeroed")).toHaveLength(0);
  });

  it("marks constant channels on their tiles, unlike dead ones, and says so in the tooltip", async () => {
    const g = make(400);
    const layer = peakLayer(4, 8, 8);
    layer.flags[2] = 2;
    g.setLayer(layer);
    await nextFrame();
    const ctx = g.canvas.getContext("2d")!;
    const text = vi.spyOn(ctx, "fillText");
    const lines: [number, number][] = [];
    vi.spyOn(ctx, "moveTo").mockImplementation(function (this: CanvasRenderingContext2D, x, y) {
      lines.push([x, y]);
      CanvasRenderingContext2D.prototype.moveTo.call(this, x, y);
    });
    g.setOptions({});
    await nextFrame();
    expect(text.mock.calls.filter((c) => c[0] === "constant")).toHaveLength(1);
    // A flat line through the middle of tile 2 (the dead tile 1 gets a cross from its corners instead).
    const r = g.tileClientRect(2)!;
    const cr = g.canvas.getBoundingClientRect();
    const mid = r.top - cr.top + r.height / 2;
    expect(lines.some(([x, y]) => Math.abs(y - mid) < 0.5 && x > r.left - cr.left && x < r.right - cr.left)).toBe(true);
    await userEvent.hover(g.canvas, { position: { x: r.left - cr.left + 5, y: r.top - cr.top + 5 } } as object);
    await nextFrame();
    const tip = g.element.querySelector<HTMLElement>(".fm-grid-tooltip")!;
    expect(tip.textContent).toContain("Channel 2 · constant");
    expect(tip.textContent).toContain("Constant: one value everywhere");
  });

  it("fits tile labels to the tile's size on screen and drops them when too small to read", async () => {
    const g = make(900);
    g.setLayer(peakLayer(576, 4, 4));
    await nextFrame();
    const ctx = g.canvas.getContext("2d")!;
    const labels: { text: string; font: number }[] = [];
    const numbers = new Set(Array.from({ length: 576 }, (_, c) => String(c)));
    vi.spyOn(ctx, "fillText").mockImplementation(function (this: CanvasRenderingContext2D, t: string) {
      if (numbers.has(t)) labels.push({ text: t, font: Number.parseFloat(this.font) });
    });
    g.setOptions({ badges: new Float32Array(576).fill(0.125) });
    await nextFrame();
    // 24 columns across 900 px: 36 px tiles, too small for a readable number that leaves the map visible.
    expect(g.canvas.dataset.columns).toBe("24");
    expect(labels).toEqual([]);
    g.setView({ zoom: 1.4, x: 0, y: 0 });
    await nextFrame();
    // Zoomed in to ~50 px tiles: the numbers come back, in a font that fits the tile.
    const tw = g.tileClientRect(0)!.width;
    expect(labels.length).toBeGreaterThan(0);
    for (const l of labels) {
      expect(l.font).toBeGreaterThanOrEqual(LABEL_MIN_FONT_PX);
      expect(l.font).toBeLessThanOrEqual(tw / 5);
    }
  });

  it("shows a visible gap between tiles in a dark theme, even at 1280 tiles", async () => {
    const style = document.createElement("style");
    style.textContent = pageCss + gridCss;
    document.head.append(style);
    try {
      const box = container(700);
      box.className = "fmwidget";
      // JupyterLab's dark theme variables.
      box.style.setProperty("--jp-layout-color0", "#111111");
      box.style.setProperty("--jp-ui-font-color0", "rgba(255, 255, 255, 1)");
      const g = createGrid(box, {});
      grids.push(g);
      g.setLayer(peakLayer(1280, 7, 7));
      await nextFrame();
      expect(Number(g.canvas.dataset.cellWidth) - Number(g.canvas.dataset.tileWidth)).toBeGreaterThanOrEqual(1);
      const probe = document.createElement("canvas").getContext("2d")!;
      probe.fillStyle = getComputedStyle(g.element).backgroundColor;
      probe.fillRect(0, 0, 1, 1);
      const [red, green, blue] = probe.getImageData(0, 0, 1, 1).data;
      // Against black maps on a #111 page the gap is a clearly lighter grey.
      expect(0.299 * red + 0.587 * green + 0.114 * blue).toBeGreaterThan(60);
    } finally {
      style.remove();
    }
  });

  it("clicks report the channel and pixel; Enter on a focused tile clicks it", async () => {
    const g = make(400);
    const clicks: [number, number, number, boolean][] = [];
    g.onClick((h, ev) => {
      clicks.push([h.channel, h.row, h.col, ev.shiftKey]);
      return undefined;
    });
    g.setLayer(peakLayer(4, 8, 8));
    await nextFrame();
    const [x, y] = pixelCentre(g, 2, 2, 4, 8, 8);
    const cr = g.canvas.getBoundingClientRect();
    await userEvent.click(g.canvas, { position: { x: x - cr.left, y: y - cr.top } } as object);
    expect(clicks).toEqual([[2, 2, 4, false]]);
    g.focusTile(3);
    g.canvas.focus();
    await userEvent.keyboard("{ArrowLeft}{Enter}");
    expect(clicks.at(-1)?.[0]).toBe(2);
    await userEvent.keyboard("{ArrowDown}{Enter}");
    expect(clicks.at(-1)?.[0]).toBe(2); // already on the last row
    await userEvent.keyboard("{ArrowUp}{Enter}");
    expect(clicks.at(-1)?.[0]).toBe(0);
  });

  it("falls back to Canvas 2D on context loss and returns to WebGL2 on restore", async () => {
    const g = make(400);
    g.setLayer(peakLayer(3, 8, 8));
    await nextFrame();
    const glCanvas = pictureCanvas(g);
    const ext = glCanvas.getContext("webgl2")!.getExtension("WEBGL_lose_context")!;
    const lost = new Promise((r) => glCanvas.addEventListener("webglcontextlost", r, { once: true }));
    ext.loseContext();
    await lost;
    expect(g.backend).toBe("canvas2d");
    await expectPeaks(g, 3, 8, 8);
    const restored = new Promise((r) => glCanvas.addEventListener("webglcontextrestored", r, { once: true }));
    ext.restoreContext();
    await restored;
    expect(g.backend).toBe("webgl2");
    await expectPeaks(g, 3, 8, 8);
  });

  it("draws with Canvas 2D when WebGL2 is unavailable", async () => {
    const original = HTMLCanvasElement.prototype.getContext;
    vi.spyOn(HTMLCanvasElement.prototype, "getContext").mockImplementation(function (
      this: HTMLCanvasElement,
      id: string,
      o?: unknown,
    ) {
      return id === "webgl2" ? null : (original.call(this, id, o) as never);
    } as typeof original);
    vi.spyOn(console, "warn").mockImplementation(() => undefined);
    const g = make(400);
    expect(g.backend).toBe("canvas2d");
    g.setLayer(peakLayer(5, 8, 8));
    await expectPeaks(g, 5, 8, 8);
  });

  it("draws non-finite values in the NaN colour", async () => {
    const g = make(400);
    const layer = peakLayer(1, 2, 2);
    layer.values[3] = 255;
    g.setLayer(layer);
    let px: number[] = [];
    await new Promise<void>((resolve) =>
      requestAnimationFrame(() => {
        px = pixelAt(g, ...pixelCentre(g, 0, 1, 1, 2, 2));
        resolve();
      }),
    );
    expect(px).toEqual([...NAN_COLOR]);
    expect(g.hitTest(...pixelCentre(g, 0, 1, 1, 2, 2))?.value).toBeNaN();
  });

  it("reports user zoom and pan once per frame, and applies setView without reporting it as the user's", async () => {
    const g = make(400);
    g.setLayer(peakLayer(4, 8, 8));
    await nextFrame();
    const events: [ReturnType<Grid["getView"]>, boolean][] = [];
    g.onViewChange((v, byUser) => events.push([v, byUser]));
    const rect = g.canvas.getBoundingClientRect();
    for (let i = 0; i < 3; i++) {
      g.canvas.dispatchEvent(
        new WheelEvent("wheel", { deltaY: -100, clientX: rect.left + 50, clientY: rect.top + 50, cancelable: true }),
      );
    }
    await nextFrame();
    expect(events.length).toBe(1);
    expect(events[0][1]).toBe(true);
    expect(events[0][0].zoom).toBeGreaterThan(1);
    expect(events[0][0]).toEqual(g.getView());

    g.setView({ zoom: 2, x: 0.25, y: 0.25 });
    await nextFrame();
    expect(events.length).toBe(2);
    expect(events[1][1]).toBe(false);
    const v = g.getView();
    expect(v.zoom).toBe(2);
    expect(v.x).toBeCloseTo(0.25, 6);
    expect(v.y).toBeCloseTo(0.25, 6);
    // The visible centre is a quarter into the grid: at zoom 2 the grid's top-left corner is on screen.
    expect(g.tileClientRect(0)!.left).toBeCloseTo(rect.left, 3);
    expect(g.tileClientRect(0)!.width).toBeCloseTo(2 * 199, 0);
    expect(g.visibleTiles().channels).toEqual([0]);
    g.setView({ zoom: Number.NaN, x: 0, y: 0 });
    expect(g.getView()).toEqual(v);
  });

  it("applies a view set before the first layout once the layer arrives", async () => {
    const g = make(400);
    g.setView({ zoom: 2, x: 0.75, y: 0.25 });
    g.setLayer(peakLayer(4, 8, 8));
    await nextFrame();
    expect(g.getView().zoom).toBe(2);
    expect(g.getView().x).toBeCloseTo(0.75, 6);
  });

  it("keeps zoom and pan for a layer of the same shape, and resets them for another shape", async () => {
    const g = make(400);
    g.setLayer(peakLayer(4, 8, 8, "conv1"));
    await nextFrame();
    g.setView({ zoom: 3, x: 0.3, y: 0.6 });
    g.setLayer(peakLayer(4, 8, 8, "relu1"));
    await nextFrame();
    expect(g.getView().zoom).toBe(3);
    expect(g.getView().x).toBeCloseTo(0.3, 6);
    g.setLayer(peakLayer(4, 4, 4, "pool1"));
    await nextFrame();
    expect(g.getView()).toEqual({ zoom: 1, x: 0.5, y: 0.5 });
  });

  for (const backend of ["webgl2", "canvas2d"] as const) {
    it(`draws full-resolution tiles over a downsampled layer and hit-tests them at full resolution (${backend})`, async () => {
      if (backend === "canvas2d") {
        const original = HTMLCanvasElement.prototype.getContext;
        vi.spyOn(HTMLCanvasElement.prototype, "getContext").mockImplementation(function (
          this: HTMLCanvasElement,
          id: string,
          o?: unknown,
        ) {
          return id === "webgl2" ? null : (original.call(this, id, o) as never);
        } as typeof original);
        vi.spyOn(console, "warn").mockImplementation(() => undefined);
      }
      const g = make(400);
      expect(g.backend).toBe(backend);
      // 4 channels pooled 4× to 2×2 maps of zeros; channel 1 at full resolution (8×8) has one peak.
      const pooled = peakLayer(4, 2, 2);
      pooled.values.fill(0);
      g.setLayer({ ...pooled, fullHeight: 8, fullWidth: 8, downsample: 4 });
      const values = new Uint8Array(64);
      values[5 * 8 + 2] = 254;
      g.setFullRes({ channels: Int32Array.from([1]), height: 8, width: 8, values });
      let peak: number[] = [];
      let beside: number[] = [];
      await new Promise<void>((resolve) =>
        requestAnimationFrame(() => {
          peak = pixelAt(g, ...pixelCentre(g, 1, 5, 2, 8, 8));
          beside = pixelAt(g, ...pixelCentre(g, 1, 5, 3, 8, 8));
          resolve();
        }),
      );
      expect(peak).toEqual([255, 255, 255, 255]);
      expect(beside).toEqual([0, 0, 0, 255]);
      expect(g.hitTest(...pixelCentre(g, 1, 5, 2, 8, 8))).toMatchObject({
        channel: 1,
        row: 5,
        col: 2,
        value: 1,
        downsample: 1,
      });
      expect(g.hitTest(...pixelCentre(g, 0, 1, 1, 2, 2))).toMatchObject({ channel: 0, row: 1, col: 1, downsample: 4 });
      // A new layer drops them.
      g.setLayer({ ...pooled, fullHeight: 8, fullWidth: 8, downsample: 4 });
      expect(g.hitTest(...pixelCentre(g, 1, 1, 0, 2, 2))).toMatchObject({ channel: 1, row: 1, col: 0, downsample: 4 });
    });
  }

  it("rejects a malformed layer with what was wrong", () => {
    const g = make(400);
    const bad = { ...peakLayer(2, 4, 4), stats: new Float32Array(6) };
    expect(() => g.setLayer(bad)).toThrow(/"conv1".*stats has 6 entries, expected 12/);
  });

  it("destroy removes its DOM, listeners and observer and frees the GL context", async () => {
    const adds: [EventTarget, string, unknown, AddEventListenerOptions | boolean | undefined][] = [];
    const removes: [EventTarget, string, unknown][] = [];
    const realAdd = EventTarget.prototype.addEventListener;
    const realRemove = EventTarget.prototype.removeEventListener;
    vi.spyOn(EventTarget.prototype, "addEventListener").mockImplementation(function (this: EventTarget, type, fn, o) {
      adds.push([this, type, fn, o]);
      realAdd.call(this, type, fn, o);
    });
    vi.spyOn(EventTarget.prototype, "removeEventListener").mockImplementation(function (
      this: EventTarget,
      type,
      fn,
      o,
    ) {
      removes.push([this, type, fn]);
      realRemove.call(this, type, fn, o);
    });
    const disconnect = vi.spyOn(ResizeObserver.prototype, "disconnect");
    const box = container(400);
    const g = createGrid(box, {});
    g.setLayer(peakLayer(3, 8, 8));
    await nextFrame();
    const gl = pictureCanvas(g).getContext("webgl2")!;
    g.destroy();
    expect(adds.length).toBeGreaterThan(5);
    const leaked = adds.filter(([t, type, fn, o]) => {
      const aborted = typeof o === "object" && o.signal?.aborted === true;
      return !aborted && !removes.some(([t2, type2, fn2]) => t2 === t && type2 === type && fn2 === fn);
    });
    expect(leaked.map(([, type]) => type)).toEqual([]);
    expect(disconnect).toHaveBeenCalled();
    expect(gl.isContextLost()).toBe(true);
    expect(box.childElementCount).toBe(0);
  });
});
