import type { LayerMeta } from "../protocol";

/** A layer's metadata as the kernel sends it in `layers`, with test-friendly defaults. */
export function layerMeta(name: string, extra: Partial<LayerMeta> = {}): LayerMeta {
  return {
    name,
    module: name,
    call: 1,
    type: "Conv2d",
    shape: [1, 2, 2, 2],
    dtype: "float32",
    min: 0,
    max: 1,
    dead: 0,
    constant: 0,
    nonfinite: 0,
    kind: "conv",
    pre: null,
    post: null,
    filter: false,
    ...extra,
  };
}
