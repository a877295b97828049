import { describe, expect, it } from "vitest";
import { channelStats, countTicks, exactValue, histogram } from "./detail";

describe("channelStats", () => {
  it("summarizes finite values and counts NaN and Inf apart", () => {
    const s = channelStats(new Float32Array([0, 1, 3, NaN, Infinity, -Infinity]));
    expect(s).toMatchObject({ min: 0, max: 3, nan: 1, inf: 2 });
    expect(s.mean).toBeCloseTo(4 / 3);
    expect(s.zeros).toBeCloseTo(1 / 6);
  });

  it("reports 0 for min and max when no value is finite, as the kernel does", () => {
    expect(channelStats(new Float32Array([NaN]))).toMatchObject({ min: 0, max: 0, mean: 0, nan: 1 });
  });
});

describe("exactValue", () => {
  it("prints the shortest decimal that is the same float32", () => {
    expect(exactValue(Math.fround(0.1))).toBe("0.1");
    expect(exactValue(Math.fround(-3.14159274))).toBe("-3.1415927");
    expect(Math.fround(Number(exactValue(Math.fround(1 / 3))))).toBe(Math.fround(1 / 3));
    expect(exactValue(NaN)).toBe("NaN");
  });
});

describe("histogram", () => {
  it("bins finite values over [min, max], max in the last bin", () => {
    expect(Array.from(histogram(new Float32Array([0, 0.1, 0.6, 1, NaN]), 2, 0, 1))).toEqual([2, 2]);
  });

  it("puts a constant map in one bin", () => {
    expect(Array.from(histogram(new Float32Array([2, 2]), 3, 2, 2))).toEqual([2, 0, 0]);
  });
});

describe("countTicks", () => {
  it("labels the histogram's log count axis with the tallest bin and 1", () => {
    expect(countTicks(3136)).toEqual([
      { count: 3136, label: "3.1k" },
      { count: 1, label: "1" },
    ]);
    expect(countTicks(42).map((t) => t.label)).toEqual(["42", "1"]);
    expect(countTicks(1)).toEqual([{ count: 1, label: "1" }]);
  });
});
