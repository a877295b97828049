/**
 * The one DOM helper every view module uses: an element with a class and, optionally, its text.
 * Text goes in through `textContent`, never HTML: layer and class names come from user code.
 *
 * @example
 *   const title = el("div", "fm-title", meta.name);
 */
export function el<K extends keyof HTMLElementTagNameMap>(tag: K, className: string, text?: string): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}
