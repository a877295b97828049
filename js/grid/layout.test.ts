import { describe, expect, it } from "vitest";
import {
  clampView,
  computeLayout,
  hitTestLayout,
  IDENTITY_VIEW,
  maxZoom,
  panBy,
  revealTile,
  tileOrigin,
  visibleCells,
  zoomAround,
} from "./layout";

describe("computeLayout", () => {
  it.each([
    [1, 1, 1],
    [3, 2, 2],
    [64, 8, 8],
    [2048, 46, 45],
  ])("%i square tiles → %i columns × %i rows, at any width", (count, columns, rows) => {
    for (const width of [120, 640, 1200]) {
      const l = computeLayout(count, 14, 14, width);
      expect([l.columns, l.rows]).toEqual([columns, rows]);
      // Fits the width exactly, every tile present.
      expect(l.columns * l.tileWidth + (l.columns - 1) * l.gap).toBeCloseTo(width, 6);
      expect(l.columns * l.rows).toBeGreaterThanOrEqual(count);
      expect(l.tileWidth).toBeCloseTo(l.scale * 14, 9);
      expect(l.viewportHeight).toBe(Math.ceil(l.rows * l.tileHeight + (l.rows - 1) * l.gap));
    }
  });

  it("keeps wide maps' grid near-square in shape", () => {
    const l = computeLayout(16, 8, 32, 800);
    const w = l.columns * l.tileWidth;
    const h = l.rows * l.tileHeight;
    expect(w / h).toBeGreaterThan(0.5);
    expect(w / h).toBeLessThan(2);
  });

  it("with maxHeight, chooses the columns that make tiles largest while fitting both sides", () => {
    const l = computeLayout(64, 10, 10, 800, 200);
    expect(l.viewportHeight).toBeLessThanOrEqual(200);
    expect(l.columns * l.tileWidth + (l.columns - 1) * l.gap).toBeLessThanOrEqual(800 + 1e-9);
    for (const c of [l.columns - 1, l.columns + 1]) {
      const rows = Math.ceil(64 / c);
      const s = Math.min((800 - (c - 1) * l.gap) / (c * 10), (200 - (rows - 1) * l.gap) / (rows * 10));
      expect(s).toBeLessThanOrEqual(l.scale + 1e-9);
    }
  });

  it("shrinks the gap for tiny tiles and rejects empty layers", () => {
    expect(computeLayout(64, 8, 8, 800).gap).toBe(2);
    expect(computeLayout(2048, 8, 8, 300).gap).toBe(1);
    expect(computeLayout(1, 8, 8, 300).gap).toBe(0);
    expect(() => computeLayout(0, 8, 8, 300)).toThrow(/at least one tile/);
  });
});

describe("view transform and hit testing", () => {
  const layout = computeLayout(64, 10, 10, 814); // gap 2 → tiles of 100 px, cells of 102 px
  it("uses round numbers in this fixture", () => {
    expect([layout.tileWidth, layout.cellWidth, layout.scale]).toEqual([100, 102, 10]);
  });

  it("maps a point to tile and pixel at zoom 1", () => {
    expect(hitTestLayout(layout, IDENTITY_VIEW, 5, 5)).toEqual({ tileIndex: 0, row: 0, col: 0 });
    // Tile 9 is row 1, col 1: origin (102, 102); pixel (row 3, col 7) spans 70..80 × 30..40 inside it.
    expect(hitTestLayout(layout, IDENTITY_VIEW, 102 + 75, 102 + 35)).toEqual({ tileIndex: 9, row: 3, col: 7 });
    expect(hitTestLayout(layout, IDENTITY_VIEW, 101, 50)).toBeNull(); // the gap
    expect(hitTestLayout(layout, IDENTITY_VIEW, -1, 50)).toBeNull();
    expect(hitTestLayout(layout, IDENTITY_VIEW, 50, 8 * 102 + 5)).toBeNull(); // below the last row
  });

  it("inverts zoom and pan: a world point drawn at screen s is hit at s", () => {
    let view = zoomAround(IDENTITY_VIEW, layout, 3, 400, 300);
    view = panBy(view, layout, -57, 23);
    let checked = 0;
    for (let tileIndex = 0; tileIndex < 64; tileIndex++) {
      for (const [row, col] of [
        [0, 0],
        [4, 9],
        [9, 9],
        [5, 2],
      ]) {
        const [ox, oy] = tileOrigin(layout, tileIndex);
        const sx = view.k * (ox + (col + 0.5) * layout.scale) + view.x;
        const sy = view.k * (oy + (row + 0.5) * layout.scale) + view.y;
        if (sx < 0 || sy < 0 || sx >= layout.viewportWidth || sy >= layout.viewportHeight) continue;
        expect(hitTestLayout(layout, view, sx, sy)).toEqual({ tileIndex, row, col });
        checked++;
      }
    }
    // At 3× zoom about a ninth of the 64 tiles are in view.
    expect(checked).toBeGreaterThan(20);
  });

  it("zooming keeps the point under the pointer fixed", () => {
    const view = zoomAround(IDENTITY_VIEW, layout, 2.5, 321, 123);
    expect(view.k).toBe(2.5);
    expect((321 - view.x) / view.k).toBeCloseTo(321, 9);
    expect((123 - view.y) / view.k).toBeCloseTo(123, 9);
    const back = zoomAround(view, layout, 1 / 2.5, 321, 123);
    expect(back).toEqual({ k: 1, x: 0, y: 0 });
  });

  it("clamps zoom to [1, maxZoom] and keeps the content covering the viewport", () => {
    expect(clampView({ k: 0.2, x: 50, y: 50 }, layout)).toEqual({ k: 1, x: 0, y: 0 });
    const deep = clampView({ k: 1e9, x: 0, y: 0 }, layout);
    expect(deep.k).toBe(maxZoom(layout));
    expect(maxZoom(layout) * layout.scale).toBeGreaterThanOrEqual(28);
    const far = panBy({ k: 2, x: 0, y: 0 }, layout, -1e6, -1e6);
    expect(far.x).toBe(layout.viewportWidth * (1 - 2));
    expect(far.y).toBe(layout.viewportHeight * (1 - 2));
  });

  it("lists visible cells and reveals a tile by panning", () => {
    expect(visibleCells(layout, IDENTITY_VIEW)).toEqual({ c0: 0, c1: 7, r0: 0, r1: 7 });
    const view = { k: 4, x: 0, y: 0 };
    const moved = revealTile(view, layout, 63);
    const [ox, oy] = tileOrigin(layout, 63);
    expect(moved.k).toBe(4);
    expect(4 * (ox + layout.tileWidth) + moved.x).toBeLessThanOrEqual(layout.viewportWidth + 1e-9);
    expect(4 * (oy + layout.tileHeight) + moved.y).toBeLessThanOrEqual(layout.viewportHeight + 1e-9);
    expect(visibleCells(layout, moved).c1).toBe(7);
  });
});
