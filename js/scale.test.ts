import { describe, expect, it } from "vitest";
import { dequantize, displayRange, formatValue, toUnit } from "./scale";

describe("displayRange", () => {
  const args = [-1, 3, -5, 8, -20, 40] as const;

  it("picks the range of its scope", () => {
    expect(displayRange("channel", false, ...args)).toEqual([-1, 3]);
    expect(displayRange("layer", false, ...args)).toEqual([-5, 8]);
    expect(displayRange("global", false, ...args)).toEqual([-20, 40]);
  });

  it("symmetric centres zero on the largest magnitude", () => {
    expect(displayRange("channel", true, ...args)).toEqual([-3, 3]);
    expect(displayRange("layer", true, ...args)).toEqual([-8, 8]);
    expect(displayRange("global", true, ...args)).toEqual([-40, 40]);
    expect(displayRange("channel", true, -7, 2, 0, 0, 0, 0)).toEqual([-7, 7]);
  });

  it("never returns an empty range and keeps zero meaningful", () => {
    expect(displayRange("channel", false, 0, 0, 0, 0, 0, 0)).toEqual([0, 1]);
    expect(displayRange("channel", false, 2.5, 2.5, 0, 0, 0, 0)).toEqual([0, 2.5]);
    expect(displayRange("channel", false, -4, -4, 0, 0, 0, 0)).toEqual([-4, 0]);
    expect(displayRange("channel", true, 0, 0, 0, 0, 0, 0)).toEqual([-1, 1]);
    expect(displayRange("layer", false, 0, 0, NaN, Infinity, 0, 0)).toEqual([0, 1]);
  });
});

describe("dequantize", () => {
  it("is exact at min and max, NaN at 255", () => {
    const min = Math.fround(0.1);
    const max = Math.fround(0.3);
    expect(dequantize(0, min, max)).toBe(min);
    expect(dequantize(254, min, max)).toBe(max);
    expect(dequantize(255, min, max)).toBeNaN();
    expect(dequantize(127, -1, 1)).toBeCloseTo(0, 12);
  });

  it("inverts protocol quantization within (max - min) / 508", () => {
    const min = -3.25;
    const max = 7.5;
    for (let i = 0; i <= 100; i++) {
      const v = min + (i / 100) * (max - min);
      const q = Math.round(((v - min) / (max - min)) * 254);
      expect(Math.abs(dequantize(q, min, max) - v)).toBeLessThanOrEqual((max - min) / 508 + 1e-12);
    }
  });
});

describe("toUnit", () => {
  it("maps and clamps", () => {
    expect(toUnit(5, 0, 10)).toBe(0.5);
    expect(toUnit(-3, 0, 10)).toBe(0);
    expect(toUnit(30, 0, 10)).toBe(1);
    expect(toUnit(Infinity, 0, 10)).toBe(1);
    expect(toUnit(-Infinity, 0, 10)).toBe(0);
    expect(toUnit(NaN, 0, 10)).toBeNaN();
    expect(toUnit(4, 4, 4)).toBe(0.5);
  });
});

describe("formatValue", () => {
  it.each([
    [0, "0"],
    [1, "1"],
    [-0.5, "-0.5"],
    [0.012345, "0.0123"],
    // biome-ignore lint/suspicious/noApproximativeNumericConstant: a value with many digits, not π.
    [3.14159, "3.14"],
    [999.7, "1000"],
    [1234.4, "1234"],
    [123456, "1.23e5"],
    [-0.00001234, "-1.23e-5"],
    [NaN, "NaN"],
    [Infinity, "Inf"],
    [-Infinity, "-Inf"],
  ])("%s → %s", (v, s) => {
    expect(formatValue(v)).toBe(s);
  });
});
