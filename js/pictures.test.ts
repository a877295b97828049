import { describe, expect, it } from "vitest";
import { drawUpscaled, rgbaImage } from "./pictures";

const picture = { width: 2, height: 1, pixels: Uint8Array.from([255, 0, 0, 0, 0, 255]) };

describe("pictures", () => {
  it("turns RGB bytes into opaque RGBA", () => {
    expect(Array.from(rgbaImage(picture).data)).toEqual([255, 0, 0, 255, 0, 0, 255, 255]);
  });

  it("upscales by a whole factor without smoothing", () => {
    const canvas = document.createElement("canvas");
    expect(drawUpscaled(canvas, picture, 9)).toBe(5);
    expect([canvas.width, canvas.height]).toEqual([10, 5]);
    const g = canvas.getContext("2d")!;
    expect(Array.from(g.getImageData(4, 2, 1, 1).data)).toEqual([255, 0, 0, 255]);
    expect(Array.from(g.getImageData(5, 2, 1, 1).data)).toEqual([0, 0, 255, 255]);
    expect(drawUpscaled(canvas, { width: 0, height: 0, pixels: new Uint8Array(0) }, 9)).toBe(0);
  });
});
