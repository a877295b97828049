/**
 * The one DOM helper every view module uses: an element with a class and, optionally, its text.
 * Text goes in through `textContent`, never HTML: layer and class names come from user code.
 *
 * @example
 *   const title = el("div", "fm-title", meta.name);
 */
export function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className: string,
  text?: string,
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/**
 * A range input with its accessible name; `max` may be set later (e.g. once the layer count is known).
 *
 * @example
 *   const opacity = rangeInput("Overlay opacity", { max: 1, step: 0.05, value: 0.6 });
 */
export function rangeInput(label: string, { min = 0, max = 1, step = 1, value = 0 } = {}): HTMLInputElement {
  const input = el("input", "fm-slider");
  input.type = "range";
  input.min = String(min);
  input.max = String(max);
  input.step = String(step);
  input.value = String(value);
  input.setAttribute("aria-label", label);
  return input;
}
