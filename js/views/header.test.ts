/// <reference types="vite/client" />
import { afterEach, describe, expect, it } from "vitest";
import type { LayerMeta } from "../protocol";
import css from "../style.css?raw";
import { layerMeta } from "../testing/fixtures";
import { aliasText, createHeader, healthSummary, layoutText, partnerLabel } from "./header";

function meta(name: string, extra: Partial<LayerMeta> = {}): LayerMeta {
  return layerMeta(name, { shape: [2, 64, 8, 8], filter: true, ...extra });
}

describe("healthSummary", () => {
  it("with a scan, tells channels dead across the dataset from those zero on this input", () => {
    expect(healthSummary(meta("x", { shape: [1, 64, 8, 8], dead: 75 }), { images: 1000, dead: 12 })).toBe(
      "12 of 64 dead across 1,000 images · 75 zero on this input",
    );
    expect(healthSummary(meta("x", { dead: 3 }), { images: 50, dead: 0 })).toBe(
      "0 of 64 dead across 50 images · 3 zero on these 2 inputs",
    );
  });

  it("counts dead, constant and non-finite channels of the layer", () => {
    expect(healthSummary(meta("x", { dead: 12, nonfinite: 2 }))).toBe("12 of 64 channels dead · 2 with NaN/Inf");
    expect(healthSummary(meta("x"))).toBe("all 64 channels alive");
  });
});

describe("header", () => {
  const containers: HTMLElement[] = [];
  afterEach(() => {
    for (const c of containers.splice(0)) c.remove();
  });

  it("renders the header's name, shape, downsample badge, loading mark and health as text", () => {
    const root = document.createElement("div");
    containers.push(root);
    const header = createHeader(root, { onLayer: () => {} });
    header.update(meta("<b>x</b>", { dead: 3 }), 2);
    const pending = root.querySelector<HTMLElement>(".fm-header-pending")!;
    expect(pending.hidden).toBe(true);
    header.setPending(true);
    expect(pending.hidden).toBe(false);
    expect(header.element.getAttribute("aria-busy")).toBe("true");
    header.setPending(false);
    expect(pending.hidden).toBe(true);
    expect(header.element.hasAttribute("aria-busy")).toBe(false);
    expect(root.querySelector("b")).toBeNull();
    expect(root.textContent).toContain("<b>x</b>");
    expect(root.textContent).toContain("64 × 8 × 8");
    expect(root.textContent).toContain("1/2 resolution");
    expect(root.textContent).toContain("3 of 64 channels dead");
  });

  it("names the blocks a layer's output also is, shortest first", () => {
    expect(aliasText([])).toBe("");
    expect(aliasText(["layer4.2", "layer4"])).toBe("= layer4 +1");
    const root = document.createElement("div");
    containers.push(root);
    const header = createHeader(root, { onLayer: () => {} });
    header.update(meta("layer4.2.relu:3", { aliases: ["layer4"] }), 1);
    const alias = root.querySelector<HTMLElement>(".fm-alias")!;
    expect(alias.textContent).toBe("= layer4");
    expect(alias.title).toBe("Also the output of layer4");
    header.update(meta("conv1"), 1);
    expect(alias.hidden).toBe(true);
  });

  it("says when maps were read from a channels-last tensor or from transformer tokens", () => {
    expect(layoutText(meta("conv1"))).toBeNull();
    expect(layoutText(meta("stages.0.1.mlp.fc1", { layout: "nhwc" }))!.text).toBe("channels-last");
    const tokens = layoutText(meta("encoder.layers.encoder_layer_0", { layout: "tokens", extra_tokens: 1 }))!;
    expect(tokens.text).toBe("patch tokens");
    expect(tokens.title).toContain("1 class/register token not shown");
    const root = document.createElement("div");
    containers.push(root);
    const header = createHeader(root, { onLayer: () => {} });
    header.update(meta("blocks.3", { layout: "tokens", extra_tokens: 2 }), 1);
    expect(root.textContent).toContain("patch tokens");
    header.update(meta("conv1"), 1);
    expect(root.textContent).not.toContain("patch tokens");
  });

  it("marks maps captured in training mode, with the reason and the fix in its title", () => {
    const root = document.createElement("div");
    containers.push(root);
    const header = createHeader(root, { onLayer: () => {} });
    header.update(meta("conv1"), 1);
    const badge = [...root.querySelectorAll<HTMLElement>(".fm-badge")].find((b) => b.textContent === "training mode")!;
    expect(badge.hidden).toBe(true);
    header.setTraining(true);
    expect(badge.hidden).toBe(false);
    expect(badge.title).toContain("model.eval()");
    header.setTraining(false);
    expect(badge.hidden).toBe(true);
  });

  it("offers the activation partner in the header and reports its name", () => {
    const root = document.createElement("div");
    containers.push(root);
    const picked: string[] = [];
    const header = createHeader(root, { onLayer: (name) => picked.push(name) });
    const conv = meta("features.0.0", { post: "features.0.2" });
    const act = meta("features.0.2", { type: "ReLU6", kind: "act", pre: "features.0.0" });
    expect(partnerLabel(conv, act)).toBe("after ReLU6 →");
    expect(partnerLabel(act, conv)).toBe("← before activation");
    const button = root.querySelector<HTMLButtonElement>("button")!;
    header.update(conv, 1);
    expect(button.hidden).toBe(true);
    header.update(conv, 1, act);
    expect(button.hidden).toBe(false);
    expect(button.textContent).toBe("after ReLU6 →");
    button.click();
    header.update(act, 1, conv);
    button.click();
    expect(picked).toEqual(["features.0.2", "features.0.0"]);
  });

  it("stays on one line at half a compare row's width, cutting the health line with an ellipsis and a title", () => {
    const style = document.createElement("style");
    style.textContent = css;
    const root = document.createElement("div");
    root.className = "fmwidget";
    root.style.width = "520px";
    root.append(style);
    document.body.append(root);
    containers.push(root);
    const header = createHeader(root, { onLayer: () => {} });
    const long = meta("features.16.conv.1.0", { shape: [1, 960, 7, 7], dead: 12, constant: 3, nonfinite: 2 });
    header.update(long, 2, meta("features.16.conv.1.2", { type: "ReLU6" }));
    header.setPrediction({ index: 285, label: "Egyptian cat", prob: 0.72 });
    const parts = [...header.element.children].filter((c) => !(c as HTMLElement).hidden) as HTMLElement[];
    const tops = new Set(parts.map((p) => Math.round(p.getBoundingClientRect().top / 8)));
    expect(tops.size).toBe(1);
    expect(header.element.getBoundingClientRect().right).toBeLessThanOrEqual(root.getBoundingClientRect().right + 0.5);
    const health = header.element.querySelector<HTMLElement>(".fm-health")!;
    expect(health.scrollWidth).toBeGreaterThan(health.clientWidth);
    expect(health.title).toBe("12 of 960 channels dead · 3 constant · 2 with NaN/Inf");
    expect(header.element.querySelector<HTMLElement>(".fm-title")!.title).toBe("features.16.conv.1.0");
    expect(header.element.querySelector<HTMLElement>(".fm-prediction")!.title).toMatch(/^Egyptian cat 72%: /);
  });
});
