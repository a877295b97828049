import { afterEach, describe, expect, it } from "vitest";
import { isDarkTheme, themeColors, watchTheme } from "./theme";

describe("theme", () => {
  afterEach(() => {
    delete document.body.dataset.jpThemeLight;
  });

  it("reads JupyterLab's light/dark flag from the body", () => {
    document.body.dataset.jpThemeLight = "false";
    expect(isDarkTheme()).toBe(true);
    document.body.dataset.jpThemeLight = "true";
    expect(isDarkTheme()).toBe(false);
  });

  it("reports a theme switch, and nothing after it stops watching", async () => {
    document.body.dataset.jpThemeLight = "true";
    const seen: boolean[] = [];
    const stop = watchTheme((dark) => seen.push(dark));
    document.body.dataset.jpThemeLight = "false";
    await expect.poll(() => seen).toEqual([true]);
    stop();
    document.body.dataset.jpThemeLight = "true";
    await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
    expect(seen).toEqual([true]);
  });

  it("resolves the widget's colour variables, with fallbacks outside the stylesheet", () => {
    const el = document.createElement("div");
    el.style.setProperty("--fm-accent", "#123456");
    document.body.append(el);
    try {
      const colors = themeColors(el);
      expect(colors.accent).toBe("#123456");
      expect(colors.fg).not.toBe("");
    } finally {
      el.remove();
    }
  });
});
