import { afterEach, describe, expect, it } from "vitest";
import { colormapLUT } from "../colormaps";
import { createColorbar, niceTicks } from "./colorbar";

afterEach(() => document.body.replaceChildren());

describe("niceTicks", () => {
  it("gives round values inside the range", () => {
    expect(niceTicks(-0.5, 3.2, 5)).toEqual([0, 1, 2, 3]);
    expect(niceTicks(0, 1, 5)).toEqual([0, 0.2, 0.4, 0.6, 0.8, 1]);
    expect(niceTicks(-30, 30, 4)).toEqual([-20, 0, 20]);
    expect(niceTicks(1, 1, 5)).toEqual([]);
  });
});

describe("createColorbar", () => {
  it("draws the colormap top = high and labels the real range", () => {
    const box = document.createElement("div");
    box.style.height = "200px";
    document.body.append(box);
    const bar = createColorbar(box);
    bar.update("viridis", -0.5, 3.2, "layer scale <b>");
    const ticks = [...bar.element.querySelectorAll<HTMLElement>(".fm-grid-colorbar-tick")];
    // The exact ends, plus the round ticks not crowding them (3 is too close to 3.2 to print both).
    expect(ticks.map((t) => t.textContent)).toEqual(["3.2", "0", "1", "2", "-0.5"]);
    // Each tick sits where its value is on the strip.
    const at = (v: string): number => parseFloat(ticks.find((t) => t.textContent === v)!.style.top);
    expect(at("3.2")).toBe(0);
    expect(at("-0.5")).toBe(100);
    expect(at("1")).toBeCloseTo(((3.2 - 1) / 3.7) * 100, 3);
    const label = bar.element.querySelector(".fm-grid-colorbar-label")!;
    expect(label.textContent).toBe("layer scale <b>");
    expect(label.children.length).toBe(0);
    expect(bar.element.getAttribute("aria-label")).toContain("viridis colormap from -0.5 to 3.2");

    const strip = bar.element.querySelector<HTMLCanvasElement>("canvas")!;
    const data = strip.getContext("2d")!.getImageData(0, 0, 1, 256).data;
    const lut = colormapLUT("viridis");
    expect(Array.from(data.subarray(0, 4))).toEqual(Array.from(lut.subarray(1020, 1024)));
    expect(Array.from(data.subarray(1020, 1024))).toEqual(Array.from(lut.subarray(0, 4)));

    bar.destroy();
    expect(box.childElementCount).toBe(0);
  });
});
