import { afterEach, describe, expect, it } from "vitest";
import { heatmapLUT } from "../colormaps";
import type { GradcamResult } from "../protocol";
import { camMethodLabel, camMethodOption, createGradcamPanel, heatmapPicture, upsampleBilinear } from "./gradcam";

function result(extra: Partial<GradcamResult> = {}): GradcamResult {
  // A 4×4 map with its maximum at row 3, col 0 (bottom-left) and a weaker spot at row 0, col 3.
  const heatmap = new Float32Array(16);
  heatmap[3 * 4 + 0] = 2;
  heatmap[0 * 4 + 3] = 0.5;
  return {
    layer: "layer4",
    sample: 0,
    method: "gradcam",
    normalized: false,
    target: 285,
    label: "Egyptian cat",
    height: 4,
    width: 4,
    heatmap,
    weights: new Float32Array(8),
    ...extra,
  };
}

describe("upsampleBilinear", () => {
  it("places source values at pixel centres, as torch's align_corners=False does", () => {
    expect(Array.from(upsampleBilinear(new Float32Array([0, 1]), 1, 2, 1, 4))).toEqual([0, 0.25, 0.75, 1]);
    // 2×2 → 4×4: torch.nn.functional.interpolate([[0, 4], [8, 12]], size=4, mode="bilinear") row 1.
    const up = upsampleBilinear(new Float32Array([0, 4, 8, 12]), 2, 2, 4, 4);
    expect(Array.from(up.subarray(4, 8))).toEqual([2, 3, 5, 6]);
  });

  it("keeps the size when no scaling is asked", () => {
    const src = Float32Array.from([1, 2, 3, 4, 5, 6]);
    expect(upsampleBilinear(src, 2, 3, 2, 3)).toEqual(src);
  });
});

describe("heatmapPicture", () => {
  it("puts the hottest colour where the heatmap peaks, blended over the input by the opacity", () => {
    const input = { height: 32, width: 32, pixels: new Uint8Array(32 * 32 * 3).fill(200) };
    const image = heatmapPicture(result(), input, 1);
    expect([image.width, image.height]).toEqual([32, 32]);
    const lut = heatmapLUT();
    const at = (r: number, c: number): number[] =>
      Array.from(image.data.subarray(4 * (r * 32 + c), 4 * (r * 32 + c) + 3));
    // Bottom-left 8×8 block is the peak's pixel; its centre gets the top of the colormap.
    expect(at(28, 3)).toEqual(Array.from(lut.subarray(4 * 255, 4 * 255 + 3)));
    expect(at(4, 4)).toEqual(Array.from(lut.subarray(0, 3)));
    const half = heatmapPicture(result(), input, 0.5);
    expect(half.data[4 * (4 * 32 + 4)]).toBe(Math.round(0.5 * 200 + 0.5 * lut[0]));
  });

  it("draws the heatmap alone at its own size without an input", () => {
    const image = heatmapPicture(result(), null, 0.3);
    expect([image.width, image.height]).toEqual([4, 4]);
    expect(image.data[4 * 12 + 0]).toBe(heatmapLUT()[4 * 255]);
  });
});

describe("Grad-CAM panel", () => {
  const hosts: HTMLElement[] = [];
  afterEach(() => {
    for (const h of hosts.splice(0)) h.remove();
  });

  function mount(): {
    panel: ReturnType<typeof createGradcamPanel>;
    targets: (number | null)[];
    methods: string[];
    root: HTMLElement;
  } {
    const root = document.createElement("div");
    document.body.append(root);
    hosts.push(root);
    const targets: (number | null)[] = [];
    const methods: string[] = [];
    const panel = createGradcamPanel(root, { onTarget: (t) => targets.push(t), onMethod: (m) => methods.push(m) });
    return { panel, targets, methods, root };
  }

  it("lists predicted and the top classes as text, and reports the chosen class", () => {
    const { panel, targets, root } = mount();
    panel.setClasses(
      [
        { index: 285, label: "Egyptian cat", prob: 0.71 },
        { index: 17, label: null, prob: 0.1 },
        { index: 3, label: "<img src=x onerror=alert(1)>", prob: 0.01 },
      ],
      null,
    );
    const select = root.querySelector<HTMLSelectElement>('select[aria-label="Class"]')!;
    expect(Array.from(select.options).map((o) => o.textContent)).toEqual([
      "predicted",
      "Egyptian cat (71%)",
      "class 17 (10%)",
      "<img src=x onerror=alert(1)> (1%)",
    ]);
    expect(root.querySelector("img")).toBeNull();
    select.value = "17";
    select.dispatchEvent(new Event("change"));
    select.value = "";
    select.dispatchEvent(new Event("change"));
    expect(targets).toEqual([17, null]);
    panel.setClasses([], 42);
    expect(select.value).toBe("42");
  });

  it("captions the layer resolution and class, and replaces the picture by a readable error", () => {
    const { panel, root } = mount();
    panel.element.hidden = false;
    panel.show(result());
    expect(panel.element.textContent).toContain("4 × 4 map");
    expect(panel.element.textContent).toContain("class: Egyptian cat (285)");
    panel.showError("the model's output is (1, 7, 7): not a classifier");
    const alert = root.querySelector<HTMLElement>('[role="alert"]')!;
    expect(alert.textContent).toContain("not a classifier");
    expect(root.querySelector<HTMLElement>(".fm-gradcam-body")!.hidden).toBe(true);
    expect(panel.element.dataset.state).toBe("error");
  });

  it("offers the kernel's CAM methods, ours first, only when there is a choice", () => {
    const { panel, methods, root } = mount();
    const picker = root.querySelector<HTMLSelectElement>('select[aria-label="CAM method"]')!;
    panel.setMethods(["gradcam"], "gradcam");
    expect(picker.closest("label")!.hidden).toBe(true);
    panel.setMethods(["gradcam", "gradcam++", "scorecam", "eigencam", "something-new"], "gradcam");
    expect(picker.closest("label")!.hidden).toBe(false);
    expect(Array.from(picker.options).map((o) => o.textContent)).toEqual([
      "Grad-CAM (ours)",
      "Grad-CAM++",
      "Score-CAM (slow: one forward per channel)",
      "EigenCAM",
      "something-new",
    ]);
    picker.value = "scorecam";
    picker.dispatchEvent(new Event("change"));
    expect(methods).toEqual(["scorecam"]);
    panel.setMethods(["gradcam", "gradcam++", "scorecam", "eigencam", "something-new"], "eigencam");
    expect(picker.value).toBe("eigencam");
    expect(camMethodLabel("layercam")).toBe("LayerCAM");
    panel.showLoading("layer4", "scorecam");
    expect(panel.element.textContent).toContain("Computing Score-CAM for layer4…");
  });

  it("captions a package method's map as input-sized and scaled to [0, 1], without channel weights", () => {
    const { panel } = mount();
    panel.setInput({ height: 4, width: 4, pixels: new Uint8Array(48) });
    panel.show(result({ method: "gradcam++", normalized: true, weights: new Float32Array(0) }));
    const text = panel.element.textContent!;
    expect(text).toContain("method: Grad-CAM++ (pytorch-grad-cam)");
    expect(text).toContain("4 × 4 map at input resolution, scaled to [0, 1] per image");
    expect(text).not.toContain("upsampled");
    expect(text).toContain("No per-channel weights: tile badges and the Grad-CAM sort need Grad-CAM (ours).");
    panel.show(result());
    expect(panel.element.textContent).toContain("method: Grad-CAM (ours)");
    expect(panel.element.textContent).not.toContain("No per-channel weights");
  });

  it("keeps a normalized map on its own [0, 1] scale rather than stretching it to its peak", () => {
    const heatmap = new Float32Array(16).fill(0.5);
    const lut = heatmapLUT();
    const normalized = heatmapPicture(result({ heatmap, normalized: true }), null, 1);
    expect(Array.from(normalized.data.subarray(0, 3))).toEqual(Array.from(lut.subarray(4 * 128, 4 * 128 + 3)));
    const ours = heatmapPicture(result({ heatmap }), null, 1);
    expect(Array.from(ours.data.subarray(0, 3))).toEqual(Array.from(lut.subarray(4 * 255, 4 * 255 + 3)));
  });

  it("says when the map is zero everywhere", () => {
    const { panel } = mount();
    panel.show(result({ heatmap: new Float32Array(16) }));
    expect(panel.element.textContent).toContain("Zero everywhere");
  });
});

describe("slow CAM methods", () => {
  afterEach(() => {
    document.body.replaceChildren();
  });

  it("say they are slow, with the forwards they take for the shown layer", () => {
    expect(camMethodOption("scorecam", 1280)).toBe("Score-CAM (slow: one forward per channel — about 1,280 here)");
    expect(camMethodOption("ablationcam", 64)).toBe("Ablation-CAM (slow: one forward per channel — about 64 here)");
    expect(camMethodOption("scorecam", 0)).toBe("Score-CAM (slow: one forward per channel)");
    expect(camMethodOption("gradcam++", 1280)).toBe("Grad-CAM++");
    const panel = createGradcamPanel(document.body, { onTarget: () => {}, onMethod: () => {} });
    panel.setMethods(["gradcam", "scorecam"], "gradcam", 96);
    const select = document.querySelector<HTMLSelectElement>('select[aria-label="CAM method"]')!;
    expect(Array.from(select.options).map((o) => o.textContent)).toEqual([
      "Grad-CAM (ours)",
      "Score-CAM (slow: one forward per channel — about 96 here)",
    ]);
    // Another layer, another count.
    panel.setMethods(["gradcam", "scorecam"], "scorecam", 1280);
    expect(select.options[1].textContent).toBe("Score-CAM (slow: one forward per channel — about 1,280 here)");
    expect(select.value).toBe("scorecam");
  });

  it("say a cancelled map was cancelled, not an error, and offer to compute it", () => {
    let retries = 0;
    const panel = createGradcamPanel(document.body, {
      onTarget: () => {},
      onMethod: () => {},
      onRetry: () => retries++,
    });
    panel.show(result());
    panel.showCancelled("features.18", "scorecam");
    expect(panel.element.dataset.state).toBe("cancelled");
    expect(panel.element.textContent).toContain("Score-CAM for features.18: cancelled.");
    expect(panel.element.querySelector('[role="alert"]')).toBeNull();
    const retry = [...panel.element.querySelectorAll("button")].find((b) => b.textContent === "Compute again")!;
    expect(retry.hidden).toBe(false);
    retry.click();
    expect(retries).toBe(1);
    panel.showLoading("features.18", "scorecam");
    expect(retry.hidden).toBe(true);
  });
});
