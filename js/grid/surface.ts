/**
 * The grid's drawing surface: its element, the interactive overlay canvas on top, and the picture drawn
 * by WebGL2, or by Canvas 2D when WebGL2 is missing, its context is lost (back to WebGL2 once restored)
 * or a layer exceeds the GPU's limits. It sizes every canvas for the device pixel ratio and follows
 * changes of that ratio.
 *
 * @example
 *   const surface = new Surface(container, { feed, relayout, redraw }, signal);
 *   surface.renderer.draw(layout, view, surface.dpr);
 */
import { Canvas2DRenderer } from "./canvas2d";
import type { Layout, Renderer } from "./layout";
import { WebGLRenderer } from "./webgl";

/** What the grid does when the surface changes under it. */
export interface SurfaceHooks {
  /** Hands the current layer and settings to a fresh renderer. */
  feed(renderer: Renderer): void;
  /** The pixel ratio or the renderer changed: lay out and size again. */
  relayout(): void;
  redraw(): void;
}

function makeCanvas(className: string): HTMLCanvasElement {
  const c = document.createElement("canvas");
  c.className = className;
  c.style.position = "absolute";
  c.style.left = "0";
  c.style.top = "0";
  return c;
}

export class Surface {
  readonly element: HTMLDivElement;
  /** The interactive canvas (aria-label "Feature maps"); labels and outlines are drawn on it. */
  readonly overlay: HTMLCanvasElement;
  readonly overlayCtx: CanvasRenderingContext2D;
  renderer: Renderer;
  dpr = window.devicePixelRatio || 1;
  private readonly glCanvas = makeCanvas("fm-grid-picture");
  private pictureCanvas: HTMLCanvasElement | null = null;
  private readonly hooks: SurfaceHooks;

  constructor(container: HTMLElement, hooks: SurfaceHooks, signal: AbortSignal) {
    this.hooks = hooks;
    const element = document.createElement("div");
    element.className = "fm-grid";
    element.style.position = "relative";
    element.style.width = "100%";
    element.style.overflow = "hidden";
    const overlay = makeCanvas("fm-grid-canvas");
    overlay.style.position = "relative";
    overlay.style.display = "block";
    overlay.style.touchAction = "none";
    overlay.tabIndex = 0;
    overlay.setAttribute("aria-label", "Feature maps");
    overlay.setAttribute("role", "img");
    overlay.dataset.columns = "0";
    overlay.dataset.rows = "0";
    element.append(this.glCanvas, overlay);
    container.append(element);
    this.element = element;
    this.overlay = overlay;
    const ctx = overlay.getContext("2d");
    if (ctx === null) throw new Error("grid: the browser could not create a 2D canvas context");
    this.overlayCtx = ctx;
    this.renderer = this.useWebGL() ?? this.useCanvas2D();
    this.start(this.renderer);
    this.glCanvas.addEventListener(
      "webglcontextlost",
      (ev) => {
        // preventDefault is what allows the browser to restore the context later.
        ev.preventDefault();
        this.start(this.useCanvas2D());
        hooks.relayout();
      },
      { signal },
    );
    this.glCanvas.addEventListener(
      "webglcontextrestored",
      () => {
        const r = this.useWebGL();
        if (r === null) return;
        this.renderer.destroy();
        this.start(r);
        hooks.redraw();
      },
      { signal },
    );
    this.watchDpr(signal);
  }

  /**
   * Sizes the canvases for a layout (none: `width` × 0) and writes its geometry on the canvas for
   * automation: `data-columns`, `data-rows` and the unzoomed tile and cell sizes in CSS px (tile i sits in
   * cell (i mod columns, i div columns)).
   */
  showLayout(layout: Layout | null, width: number): void {
    const d = this.overlay.dataset;
    d.columns = String(layout?.columns ?? 0);
    d.rows = String(layout?.rows ?? 0);
    if (layout !== null) {
      d.tileWidth = String(layout.tileWidth);
      d.tileHeight = String(layout.tileHeight);
      d.cellWidth = String(layout.cellWidth);
      d.cellHeight = String(layout.cellHeight);
    }
    this.size(layout?.viewportWidth ?? width, layout?.viewportHeight ?? 0);
  }

  /** Sizes every canvas to w × h CSS px at the device pixel ratio. */
  private size(w: number, h: number): void {
    this.element.style.height = `${h}px`;
    for (const c of [this.glCanvas, this.overlay, this.pictureCanvas]) {
      if (c === null) continue;
      c.style.width = `${w}px`;
      c.style.height = `${h}px`;
      c.width = Math.max(1, Math.round(w * this.dpr));
      c.height = Math.max(1, Math.round(h * this.dpr));
    }
  }

  /** Draws with Canvas 2D from now on (beyond the GPU's texture limits: Canvas 2D has no such limit). */
  fallBack(reason: Error): void {
    console.warn(`fmwidget: ${reason.message}; drawing with Canvas 2D instead`);
    this.renderer.destroy();
    this.start(this.useCanvas2D());
  }

  destroy(): void {
    this.renderer.destroy();
    this.element.remove();
  }

  private start(renderer: Renderer): void {
    this.renderer = renderer;
    // For tests and automation: which backend draws.
    this.overlay.dataset.backend = renderer.kind;
    this.hooks.feed(renderer);
  }

  private useCanvas2D(): Renderer {
    this.glCanvas.hidden = true;
    if (this.pictureCanvas === null) {
      this.pictureCanvas = makeCanvas("fm-grid-picture");
      this.element.insertBefore(this.pictureCanvas, this.overlay);
    }
    this.pictureCanvas.hidden = false;
    return new Canvas2DRenderer(this.pictureCanvas);
  }

  private useWebGL(): Renderer | null {
    try {
      const r = new WebGLRenderer(this.glCanvas);
      this.glCanvas.hidden = false;
      if (this.pictureCanvas !== null) this.pictureCanvas.hidden = true;
      return r;
    } catch (e) {
      console.warn(`fmwidget: ${(e as Error).message}; drawing with Canvas 2D instead`);
      return null;
    }
  }

  /** devicePixelRatio has no change event; a media query on the current ratio fires when it changes. */
  private watchDpr(signal: AbortSignal): void {
    matchMedia(`(resolution: ${this.dpr}dppx)`).addEventListener(
      "change",
      () => {
        this.dpr = window.devicePixelRatio || 1;
        this.hooks.relayout();
        if (!signal.aborted) this.watchDpr(signal);
      },
      { signal, once: true },
    );
  }
}
