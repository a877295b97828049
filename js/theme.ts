/**
 * Light/dark theme: colours come from JupyterLab's `--jp-*` CSS variables (style.css maps them to
 * `--fm-*` with fallbacks for other hosts); this module is the one reader of those variables for canvas
 * code (the grid's overlay, the histogram) and reports theme switches as they happen.
 *
 * @example
 *   const stop = watchTheme(() => { grid.refreshTheme(); redrawHistogram(); });
 *   const { fg, accent } = themeColors(root);
 */

/** Colours and fonts a canvas drawing needs, resolved from the widget's CSS. */
export interface ThemeColors {
  bg: string;
  fg: string;
  /** Text drawn over pictures (tile numbers, badges). */
  label: string;
  muted: string;
  border: string;
  accent: string;
  /** Errors and dead channels. */
  error: string;
  /** Channels zeroed by the last ablation. */
  warn: string;
  font: string;
  mono: string;
}

/** Light-theme values for an element outside the widget's stylesheet. */
const FALLBACK_LIGHT: ThemeColors = {
  bg: "#ffffff",
  fg: "#1f2328",
  label: "rgba(0, 0, 0, 0.87)",
  muted: "#6e7781",
  border: "#d0d7de",
  accent: "#1a73e8",
  error: "#d1242f",
  warn: "#b26a00",
  font: "system-ui, -apple-system, 'Segoe UI', sans-serif",
  mono: "ui-monospace, Menlo, Consolas, monospace",
};

/**
 * The current colours of the widget rooted at `el` (its computed `--fm-*` custom properties).
 *
 * @example
 *   ctx.strokeStyle = themeColors(root).accent;
 */
export function themeColors(el: Element): ThemeColors {
  const style = getComputedStyle(el);
  const colors = {} as ThemeColors;
  for (const name of Object.keys(FALLBACK_LIGHT) as (keyof ThemeColors)[]) {
    colors[name] = style.getPropertyValue(`--fm-${name}`).trim() || FALLBACK_LIGHT[name];
  }
  return colors;
}

/**
 * Whether the host shows a dark theme: JupyterLab's `data-jp-theme-light` on `<body>` when present,
 * otherwise the operating system's preference.
 *
 * @example
 *   root.dataset.theme = isDarkTheme() ? "dark" : "light";
 */
export function isDarkTheme(): boolean {
  const light = document.body.dataset.jpThemeLight;
  if (light === "true") return false;
  if (light === "false") return true;
  return window.matchMedia?.("(prefers-color-scheme: dark)").matches ?? false;
}

/**
 * Calls `onChange(dark)` whenever JupyterLab switches theme (or, outside JupyterLab, the OS does).
 * Returns the function that stops watching.
 *
 * @example
 *   signal.addEventListener("abort", watchTheme((dark) => grid.refreshTheme()));
 */
export function watchTheme(onChange: (dark: boolean) => void): () => void {
  let stopped = false;
  // Any theme switch counts, dark to dark included (the colours differ), so there is no dedupe here.
  const notify = (): void => {
    if (!stopped) onChange(isDarkTheme());
  };
  // JupyterLab swaps the theme's stylesheet and sets this attribute together; a frame later is when
  // computed styles are certain to carry the new variables.
  const observer = new MutationObserver(() => requestAnimationFrame(notify));
  observer.observe(document.body, { attributes: true, attributeFilter: ["data-jp-theme-light", "data-jp-theme-name"] });
  const media = window.matchMedia?.("(prefers-color-scheme: dark)");
  media?.addEventListener("change", notify);
  return () => {
    stopped = true;
    observer.disconnect();
    media?.removeEventListener("change", notify);
  };
}
