import { describe, expect, it } from "vitest";
import { formatPercent } from "./format";

describe("formatPercent", () => {
  it("reads probabilities as short percentages", () => {
    expect(formatPercent(0.712)).toBe("71%");
    expect(formatPercent(0.004)).toBe("0.4%");
    expect(formatPercent(0.0002)).toBe("<0.1%");
  });

  it("says NaN when the kernel sent no finite probability (a NaN input), never '<0.1%'", () => {
    expect(formatPercent(null)).toBe("NaN");
    expect(formatPercent(Number.NaN)).toBe("NaN");
  });
});
