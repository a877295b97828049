/**
 * The grid's zoom and pan: the view in CSS px, kept inside the grid, reset when the tiles change size or
 * count, converted to and from the `view` trait's form, and reported once per frame when it changed
 * (saying whether the user moved it).
 *
 * @example
 *   camera.move(panBy(camera.view, layout, 10, 0), layout); // a drag
 *   const change = camera.changed(layout);                    // in the frame: { state, byUser } or null
 */
import type { ViewState } from "./grid";
import { clampView, IDENTITY_VIEW, type Layout, type View } from "./layout";
import { fromViewState, toViewState } from "./picking";

export class Camera {
  view: View = IDENTITY_VIEW;
  /** The view last reported, whether the user moved it since, and one set before any layout. */
  private reported: View = IDENTITY_VIEW;
  private byUser = false;
  private pending: ViewState | null = null;

  /** A new layout: another tile size or count resets the view; a view set before any layout applies now. */
  fit(old: Layout | null, layout: Layout): void {
    const same =
      old !== null &&
      old.tileWidth === layout.tileWidth &&
      old.columns === layout.columns &&
      old.count === layout.count;
    this.view = clampView(same ? this.view : IDENTITY_VIEW, layout);
    if (this.pending !== null) {
      this.view = fromViewState(this.pending, layout);
      this.pending = null;
    }
  }

  /** A view change made by the user (reported with byUser = true). */
  move(view: View, layout: Layout): void {
    this.view = clampView(view, layout);
    this.byUser = true;
  }

  /**
   * A `view` trait value (not reported as the user's); before the first layout it is kept for it.
   * Returns false for a value with non-finite numbers, which is ignored.
   */
  set(v: ViewState, layout: Layout | null): boolean {
    if (![v?.zoom, v?.x, v?.y].every((n) => typeof n === "number" && Number.isFinite(n))) return false;
    if (layout === null) {
      this.pending = { zoom: v.zoom, x: v.x, y: v.y };
      return false;
    }
    this.view = fromViewState(v, layout);
    return true;
  }

  reset(): void {
    this.view = IDENTITY_VIEW;
  }

  /** The view in the trait's form (the pending one before any layout). */
  state(layout: Layout | null): ViewState {
    return layout === null ? (this.pending ?? { zoom: 1, x: 0.5, y: 0.5 }) : toViewState(this.view, layout);
  }

  /** The view to report, once, when it changed since the last report. */
  changed(layout: Layout | null): { state: ViewState; byUser: boolean } | null {
    const { view, reported } = this;
    if (view.k === reported.k && view.x === reported.x && view.y === reported.y) return null;
    this.reported = view;
    const byUser = this.byUser;
    this.byUser = false;
    return { state: this.state(layout), byUser };
  }
}
