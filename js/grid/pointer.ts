/**
 * Pointer, wheel and keyboard gestures on the grid's canvas: wheel zoom, drag to pan (a press that moves
 * less than a few pixels is a click), double-click to reset (it undoes what its first click did), and the keys (+ − 0 zoom, arrows move the
 * focus, Shift+arrows pan, Enter/Space act on the focused tile). Handlers only change the grid's state
 * through `target` and ask for a frame; drawing happens once per frame.
 *
 * @example
 *   attachPointer(canvas, target, abortController.signal); // listeners go with the signal
 */
import type { HitInfo } from "./grid";
import { IDENTITY_VIEW, type Layout, panBy, type View } from "./layout";

/** What the gestures act on (the grid). */
export interface PointerTarget {
  layout(): Layout | null;
  view(): View;
  /** A view change made by the user. */
  moveView(view: View): void;
  zoomBy(factor: number, clientX?: number, clientY?: number): void;
  hitTest(clientX: number, clientY: number): HitInfo | null;
  click(hit: HitInfo, ev: MouseEvent): void;
  /** Undoes what the last pointer click did (the first click of a double-click). */
  undoClick(): void;
  /** Where the pointer is over the canvas (CSS px), or null once it left. */
  setPointer(point: { x: number; y: number } | null): void;
  /** The last interaction was a key press (the focused tile's tooltip shows) or not. */
  setKeyboardMode(on: boolean): void;
  /** The canvas got keyboard focus: a focus ring on some tile. */
  focusVisible(): void;
  /** Client rectangle of the focused tile, if any is shown. */
  focusedRect(): DOMRect | null;
  moveFocus(dCol: number, dRow: number): void;
  /** Enter/Space on the focused tile (a click, shift-click with Shift); false when no tile is focused. */
  activateFocused(shift: boolean): boolean;
  redraw(hoverOnly?: boolean): void;
}

const KEY_ZOOM = 1.5;
/** A press that moves less than this (CSS px) is a click, not a drag. */
const DRAG_THRESHOLD = 4;

const ARROWS: Record<string, [number, number]> = {
  ArrowLeft: [-1, 0],
  ArrowRight: [1, 0],
  ArrowUp: [0, -1],
  ArrowDown: [0, 1],
};

export function attachPointer(canvas: HTMLCanvasElement, t: PointerTarget, signal: AbortSignal): void {
  let press: { id: number; x: number; y: number; dragging: boolean } | null = null;
  let suppressClick = false;
  const on = <K extends keyof HTMLElementEventMap>(
    type: K,
    fn: (ev: HTMLElementEventMap[K]) => void,
    passive?: boolean,
  ): void => canvas.addEventListener(type, fn, { signal, passive });

  on(
    "wheel",
    (ev) => {
      if (t.layout() === null) return;
      const lines =
        ev.deltaMode === WheelEvent.DOM_DELTA_LINE ? 16 : ev.deltaMode === WheelEvent.DOM_DELTA_PAGE ? 400 : 1;
      const factor = Math.exp(-ev.deltaY * lines * 0.0015);
      // Zooming out of an unzoomed grid scrolls the notebook instead of being swallowed.
      if (factor < 1 && t.view().k <= 1) return;
      ev.preventDefault();
      t.zoomBy(factor, ev.clientX, ev.clientY);
    },
    false,
  );
  on("pointerdown", (ev) => {
    t.setKeyboardMode(false);
    if (ev.button !== 0) return;
    press = { id: ev.pointerId, x: ev.clientX, y: ev.clientY, dragging: false };
    canvas.setPointerCapture(ev.pointerId);
  });
  on("pointermove", (ev) => {
    const rect = canvas.getBoundingClientRect();
    const layout = t.layout();
    t.setPointer({ x: ev.clientX - rect.left, y: ev.clientY - rect.top });
    if (press !== null && press.id === ev.pointerId && layout !== null) {
      const dx = ev.clientX - press.x;
      const dy = ev.clientY - press.y;
      if (press.dragging || Math.hypot(dx, dy) >= DRAG_THRESHOLD) {
        press.dragging = true;
        press.x = ev.clientX;
        press.y = ev.clientY;
        t.moveView(panBy(t.view(), layout, dx, dy));
        return;
      }
    }
    t.redraw(true);
  });
  const release = (ev: PointerEvent): void => {
    if (press === null || press.id !== ev.pointerId) return;
    suppressClick = press.dragging;
    press = null;
    if (canvas.hasPointerCapture(ev.pointerId)) canvas.releasePointerCapture(ev.pointerId);
  };
  on("pointerup", release);
  on("pointercancel", release);
  on("pointerleave", () => {
    t.setPointer(null);
    t.redraw(true);
  });
  on("click", (ev) => {
    if (suppressClick) {
      suppressClick = false;
      return;
    }
    // The second click of a double-click (detail 2) is part of the reset, not a click on a tile.
    if (ev.detail > 1) return;
    const hit = t.hitTest(ev.clientX, ev.clientY);
    if (hit !== null) t.click(hit, ev);
  });
  // A single click opens its tile at once and a double-click undoes what its first click did: waiting
  // out the double-click interval (up to 500 ms) before every open would make each click feel slow.
  on("dblclick", () => {
    t.undoClick();
    t.moveView(IDENTITY_VIEW);
  });
  on("keydown", (ev) => {
    if (!onKey(t, ev)) return;
    t.setKeyboardMode(true);
    // JupyterLab's shortcuts would otherwise act on these keys too.
    ev.preventDefault();
    ev.stopPropagation();
  });
  on("focus", () => {
    if (canvas.matches(":focus-visible")) t.focusVisible();
    t.redraw();
  });
  on("blur", () => t.redraw(true));
}

/** Acts on a key pressed on the grid; false when the key is not the grid's. */
function onKey(t: PointerTarget, ev: KeyboardEvent): boolean {
  const layout = t.layout();
  if (layout === null || ev.altKey || ev.ctrlKey || ev.metaKey) return false;
  const step = 0.1 * Math.min(layout.viewportWidth, layout.viewportHeight);
  const arrow = ARROWS[ev.key];
  if (ev.key === "+" || ev.key === "=") {
    const r = t.focusedRect();
    if (r !== null) t.zoomBy(KEY_ZOOM, r.x + r.width / 2, r.y + r.height / 2);
    else t.zoomBy(KEY_ZOOM);
  } else if (ev.key === "-" || ev.key === "_") t.zoomBy(1 / KEY_ZOOM);
  else if (ev.key === "0") t.moveView(IDENTITY_VIEW);
  else if (arrow !== undefined && ev.shiftKey) t.moveView(panBy(t.view(), layout, -arrow[0] * step, -arrow[1] * step));
  else if (arrow !== undefined) t.moveFocus(arrow[0], arrow[1]);
  // Shift+Enter runs the cell (JupyterLab); Shift+Space is the keyboard's shift-click (select).
  else if ((ev.key === "Enter" && !ev.shiftKey) || ev.key === " ") return t.activateFocused(ev.shiftKey);
  else return false;
  return true;
}
