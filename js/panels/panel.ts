/**
 * What every part of the view is: a panel that draws the store's state in `update(changed)` (the keys
 * that changed since its last update, all of them the first time) and frees what it holds in `destroy()`.
 * Panels write traits and UI state through the store and get data from the data source only.
 *
 * @example
 *   const panel = colorbarPanel(ctx, box);
 *   store.subscribe((changed) => panel.update(changed));
 */
import type { DataSource } from "../source";
import type { Changed, Key, Store } from "../store";

export interface Panel {
  update(changed: Changed): void;
  destroy(): void;
}

/** What a panel is built with. */
export interface PanelContext {
  store: Store;
  source: DataSource;
}

/**
 * Whether any of `keys` changed.
 *
 * @example
 *   if (touched(changed, "colormap", "scale")) redraw();
 */
export function touched(changed: Changed, ...keys: Key[]): boolean {
  return keys.some((k) => changed.has(k));
}
