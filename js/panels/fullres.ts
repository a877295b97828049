/**
 * Zoomed into a downsampled layer, the few visible tiles are fetched at full resolution (latest wins), so
 * magnified pixels show the real map rather than its pooled average.
 */

import type { Grid } from "../grid/grid";
import { isDropped } from "../protocol";
import type { DataSource } from "../source";
import type { Store } from "../store";

/** Full-resolution tiles are fetched once fewer tiles than this are visible (a zoomed-in grid). */
const FULLRES_MAX_TILES = 64;

interface Tiles {
  key: string;
  channels: Set<number>;
}

export interface FullResLoader {
  /** Fetches the visible tiles at full resolution when the view calls for it. */
  request(): void;
  /** The grid got another layer: what was fetched belongs to the previous one. */
  reset(): void;
  destroy(): void;
}

export function fullResLoader(
  store: Store,
  source: DataSource,
  grid: Grid,
  showNote: (text: string) => void,
): FullResLoader {
  let shown: Tiles | null = null;
  let pending: Tiles | null = null;
  let destroyed = false;

  function request(): void {
    const layer = store.get("shown");
    if (layer === null || layer.downsample <= 1) return;
    const { channels, pixelSize } = grid.visibleTiles();
    if (channels.length === 0 || channels.length >= FULLRES_MAX_TILES || pixelSize <= 1) return;
    const key = store.get("shownKey");
    const covers = (have: Tiles | null): boolean =>
      have !== null && have.key === key && channels.every((c) => have.channels.has(c));
    if (covers(shown) || covers(pending) || store.metaOf(layer.layer) === undefined) return;
    const wanted = [...channels].sort((a, b) => a - b);
    const mine: Tiles = { key, channels: new Set(wanted) };
    pending = mine;
    const current = (): boolean => !destroyed && store.get("shownKey") === key;
    // The pooled tiles stay when this fails; the note says why the zoomed tiles are not sharper.
    const fail = (e: unknown): void => {
      if (current()) showNote(`Full-resolution tiles unavailable: ${(e as Error).message}`);
    };
    source
      .fullRes(layer.layer, store.get("sample"), wanted)
      .then(
        (data) => {
          if (pending === mine) pending = null;
          if (!current() || data.only === null || data.downsample !== 1) return;
          const only = Int32Array.from(data.only);
          grid.setFullRes({ channels: only, height: data.height, width: data.width, values: data.values });
          shown = { key, channels: new Set(data.only) };
        },
        (e: unknown) => {
          if (pending === mine) pending = null;
          if (!isDropped(e)) fail(e);
        },
      )
      // A reply that came but could not be drawn.
      .catch(fail);
  }

  return {
    request,
    reset() {
      shown = null;
    },
    destroy() {
      destroyed = true;
    },
  };
}
