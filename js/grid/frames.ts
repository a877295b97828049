/**
 * One drawing pass per animation frame: requests made between frames (a re-layout, a redraw, a hover
 * update) are merged and done together; a request made while a frame runs starts the next one.
 *
 * @example
 *   const frames = new FrameLoop((work) => { if (work.layout) relayout(); if (work.draw) draw(); });
 *   frames.request();           // redraw (and re-hover)
 *   frames.request("hover");    // only re-hit-test the pointer
 */
export interface FrameWork {
  layout: boolean;
  draw: boolean;
  hover: boolean;
}

export class FrameLoop {
  private readonly run: (work: FrameWork) => void;
  private work: FrameWork = { layout: false, draw: false, hover: false };
  private raf = 0;
  private inFrame = false;
  private stopped = false;

  constructor(run: (work: FrameWork) => void) {
    this.run = run;
  }

  /** Asks for a frame that redraws (and re-hovers), only re-hovers, or lays out first. */
  request(what: "draw" | "hover" | "layout" = "draw"): void {
    if (this.stopped) return;
    if (what === "layout") this.work.layout = true;
    if (what !== "hover") this.work.draw = true;
    this.work.hover = true;
    if (this.raf === 0 && !this.inFrame) this.raf = requestAnimationFrame(this.frame);
  }

  stop(): void {
    this.stopped = true;
    if (this.raf !== 0) cancelAnimationFrame(this.raf);
    this.raf = 0;
  }

  private readonly frame = (): void => {
    this.raf = 0;
    this.inFrame = true;
    const work = this.work;
    this.work = { layout: false, draw: false, hover: false };
    try {
      this.run(work);
    } finally {
      this.inFrame = false;
    }
    // Callbacks run during the frame (onDrawn, onHover) may have asked for another one.
    const next = this.work;
    if ((next.draw || next.hover || next.layout) && this.raf === 0 && !this.stopped) {
      this.raf = requestAnimationFrame(this.frame);
    }
  };
}
