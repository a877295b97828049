"""``FeatureMapWidget.save_html``: the view as one HTML file that needs no kernel and no network.

The file holds the front-end bundle and its CSS inline, a small JSON block (the traits the view
starts from, plus a note of what was saved) and the replies the kernel would have sent, recorded:
for each saved layer the ``layer`` reply of the shown sample (uint8 values, stats, flags, and the
group and scan arrays when the widget has them), the ``input`` picture and every Grad-CAM map the
widget has computed for a saved layer. Replies are built by the same handlers that serve the live
view (:func:`fmwidget.router.serve`), so the file draws what JupyterLab draws; their buffers are
base64 text in ``<script type="application/octet-stream">`` elements (1.33 bytes per uint8 value),
never JSON lists. The channel view reads its values from the 8-bit data and says so. The format is
described in ``docs/protocol.md`` ("Saved HTML files").

A Content-Security-Policy of ``default-src 'none'`` lets the page run its inline script and
styles and load nothing else: opened from ``file://`` it makes no request at all.

Example:
    >>> import fmwidget
    >>> w = fmwidget.demo()  # doctest: +SKIP
    >>> w.save_html("cat.html")  # doctest: +SKIP
    PosixPath('cat.html')
    >>> w.save_html("all.html", layers="all")  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ipywidgets

from fmwidget import router, wire

if TYPE_CHECKING:
    from fmwidget.widget import FeatureMapWidget

__all__ = ["ALL_LIMIT_BYTES", "DEFAULT_BUDGET_BYTES", "DEFAULT_LAYERS", "FORMAT", "save_html"]

FORMAT = "fmwidget.html/1"
#: The default selection: the shown layer and its nearest neighbours, at most this many layers...
DEFAULT_LAYERS = 5
#: ...and at most this many bytes of activations (one byte per stored value).
DEFAULT_BUDGET_BYTES = 8 * 2**20
#: The most activation bytes any file may hold (``layers="all"`` or a list); beyond, ValueError.
ALL_LIMIT_BYTES = 64 * 2**20
#: With a scan: the top dataset examples of the shown layer's channels (the open one first) are
#: saved, up to this many channels and this many bytes of crops.
EXAMPLE_CHANNELS = 64
EXAMPLES_BUDGET_BYTES = 4 * 2**20

_STATIC = Path(__file__).parent / "static"
_REVISION = 1
# Content-Security-Policy: inline script and styles, pictures from data: and blob:, nothing else.
_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data: blob:"
)
_PAGE_CSS = """
html, body { margin: 0; background: #f6f8fa; }
body { padding: 16px; font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
@media (prefers-color-scheme: dark) { html, body { background: #010409; color-scheme: dark; } }
#fmwidget-root { max-width: 1400px; margin: 0 auto; }
.fm-saved-note { margin: 0 0 8px; font-size: 12px; color: #656d76; }
@media (prefers-color-scheme: dark) { .fm-saved-note { color: #8d96a0; } }
"""


def save_html(
    widget: FeatureMapWidget,
    path: str | os.PathLike[str],
    layers: str | Sequence[str] | None = None,
) -> Path:
    """Write the widget's view to ``path`` as a self-contained HTML file; return the path.

    ``layers``: ``None`` (the shown layer and up to :data:`DEFAULT_LAYERS` - 1 nearest others,
    within :data:`DEFAULT_BUDGET_BYTES`), ``"all"``, or layer names. The shown sample is saved.
    A selection over :data:`ALL_LIMIT_BYTES` of activations raises ``ValueError``.
    """
    session = widget.session.require()
    names = _chosen_layers(widget, layers)
    sample = widget.sample
    replies: list[dict[str, Any]] = []
    blobs: list[str] = []

    def record(kind: str, args: dict[str, Any]) -> bool:
        request = {"type": "request", "id": len(replies) + 1, "kind": kind, "revision": 1, **args}
        content, buffers = router.serve(widget, request, _REVISION)
        if not content["ok"]:
            return False
        entry, blob = _recorded(kind, args, content, buffers, len(blobs))
        replies.append(entry)
        blobs.append(blob)
        return True

    for name in names:
        if not record("layer", {"layer": name, "sample": sample}):
            raise RuntimeError(f"could not save layer {name!r}: the kernel refused to serve it")
    has_input = record("input", {"sample": sample})
    cams = 0
    for layer, target, method, one in list(session.cams):
        # A map computed for another sample only (a slow method) is not computed again here.
        if layer in names and one in (None, sample):
            cams += record(
                "gradcam", {"layer": layer, "sample": sample, "target": target, "method": method}
            )
    examples = _record_examples(widget, names, record, lambda: sum(len(b) for b in blobs))
    saved = {
        "sample": sample,
        "num_samples": session.num_samples,
        "layers": len(names),
        "of_layers": len(widget.layers),
        "input": has_input,
        "gradcam": cams,
        "examples": examples,
    }
    data = {"format": FORMAT, "traits": _traits(widget, names), "saved": saved, "replies": replies}
    return _write(Path(path), widget, data, blobs)


def _record_examples(
    widget: FeatureMapWidget,
    names: list[str],
    record: Callable[[str, dict[str, Any]], bool],
    saved_bytes: Callable[[], int],
) -> int:
    """Record ``examples`` replies for the shown layer's channels (the open one first) when the
    widget has a scan of that layer; returns how many channels were saved."""
    datasets = widget.datasets
    layer = widget.layer
    if datasets is None or layer not in names or layer not in datasets.scan.layers:
        return 0
    count = widget.session.store.shape(layer)[1]
    order = list(range(count))
    if widget.channel is not None:
        order.remove(widget.channel)
        order.insert(0, widget.channel)
    start, saved = saved_bytes(), 0
    for channel in order[:EXAMPLE_CHANNELS]:
        if saved_bytes() - start > EXAMPLES_BUDGET_BYTES:
            break
        saved += record("examples", {"layer": layer, "channel": channel})
    return saved


def _chosen_layers(widget: FeatureMapWidget, layers: str | Sequence[str] | None) -> list[str]:
    """The saved layers, in the widget's order, checked against the limits."""
    order = [m["name"] for m in widget.layers]
    sizes = {m["name"]: _stored_bytes(m["shape"]) for m in widget.layers}
    if layers is None:
        return _default_layers(order, sizes, widget.layer)
    if layers == "all":
        chosen = order
    else:
        wanted = [layers] if isinstance(layers, str) else list(layers)
        if not wanted:
            raise ValueError("layers=[] saves nothing; pass layer names, 'all' or None")
        for name in wanted:
            widget.session.store.check_name(name)
        chosen = [name for name in order if name in set(wanted)]
    total = sum(sizes[name] for name in chosen)
    if total > ALL_LIMIT_BYTES:
        what = "layers='all'" if layers == "all" else f"these {len(chosen)} layers"
        raise ValueError(
            f"{what} would embed {total / 2**20:.1f} MiB of activations ({len(chosen)} layers), "
            f"more than the {ALL_LIMIT_BYTES // 2**20} MiB a saved file may hold "
            "(fmwidget.export.ALL_LIMIT_BYTES); pass fewer layer names, e.g. "
            "layers=[m['name'] for m in w.layers if m['kind'] == 'conv'], "
            "or layers=None for the shown layer and its neighbours"
        )
    return chosen


def _default_layers(order: list[str], sizes: dict[str, int], shown: str) -> list[str]:
    """The shown layer, then the nearest others (earlier first on ties) within the budget."""
    i = order.index(shown)
    nearby = sorted(range(len(order)), key=lambda j: (abs(j - i), j))
    chosen: list[int] = []
    total = 0
    for j in nearby:
        if len(chosen) == DEFAULT_LAYERS:
            break
        # Stopping at the first layer that does not fit keeps the saved layers contiguous.
        if chosen and total + sizes[order[j]] > DEFAULT_BUDGET_BYTES:
            break
        chosen.append(j)
        total += sizes[order[j]]
    return [order[j] for j in sorted(chosen)]


def _stored_bytes(shape: Sequence[int]) -> int:
    """Values one sample of a layer sends, after the live view's downsampling."""
    _, c, h, w = shape
    f = wire.downsample_factor(c, h, w, wire.DEFAULT_MAX_VALUES)
    return c * -(-h // f) * -(-w // f)


def _traits(widget: FeatureMapWidget, names: list[str]) -> dict[str, Any]:
    """The synced traits the saved view starts from: the saved layers, one sample."""
    skip = set(ipywidgets.DOMWidget.class_trait_names())
    traits = {
        name: getattr(widget, name)
        for name in widget.trait_names(sync=True)
        if not name.startswith("_") and name not in skip
    }
    kept = set(names)
    metas = []
    for meta in widget.layers:
        if meta["name"] in kept:
            # The partner toggle and the filter need layers and weights the file does not hold.
            pre, post = meta.get("pre"), meta.get("post")
            metas.append(
                {
                    **meta,
                    "pre": pre if pre in kept else None,
                    "post": post if post in kept else None,
                    "filter": False,
                }
            )
    sample = widget.sample
    ablation = traits.get("ablation")
    if ablation is not None and ablation.get("changes") is not None:
        ablation = {**ablation, "changes": [ablation["changes"][sample]]}
    layer = widget.layer if widget.layer in kept else names[0]
    channel = widget.channel if layer == widget.layer else None
    predictions = widget.predictions[sample : sample + 1]
    traits.update(
        layers=metas,
        layer=layer,
        channel=channel,
        selected=list(widget.selected) if layer == widget.layer else [],
        sample=0,
        num_samples=1,
        predictions=predictions,
        revision=_REVISION,
        status={"state": "ready", "message": ""},
        groups=[],
        group_pair=[],
        ablation=ablation,
    )
    return traits


def _recorded(
    kind: str, args: dict[str, Any], content: dict[str, Any], buffers: list[Any], index: int
) -> tuple[dict[str, Any], str]:
    """One reply as the file holds it: its content, the offset of each array in its blob."""
    parts: list[bytes] = []
    offsets: list[int] = []
    size = 0
    for buffer in buffers:
        raw = bytes(buffer)
        offsets.append(size)
        # Each array starts at a multiple of 4 bytes: float32 arrays are read in place.
        pad = -len(raw) % 4
        parts.append(raw + b"\0" * pad)
        size += len(raw) + pad
    blob = base64.b64encode(b"".join(parts)).decode("ascii")
    if kind == "layer":
        args = {"layer": args["layer"]}
    elif kind == "input":
        args = {}
    elif kind == "gradcam":
        args = {k: args[k] for k in ("layer", "target", "method")}
    entry = {"kind": kind, "args": args, "content": content, "blob": index, "offsets": offsets}
    return entry, blob


def _write(path: Path, widget: FeatureMapWidget, data: dict[str, Any], blobs: list[str]) -> Path:
    script = _asset("standalone.js", "</script")
    css = _asset("widget.css", "</style")
    title = f"fmwidget · {widget.layer}"
    top = data["traits"]["predictions"][0][0] if data["traits"]["predictions"] else None
    if top is not None and top.get("label"):
        title += f" · {top['label']}"
    parts = [
        "<!doctype html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n",
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n',
        "<meta name='viewport' content='width=device-width, initial-scale=1'>\n",
        "<meta name='color-scheme' content='light dark'>\n",
        f"<meta name='generator' content='fmwidget {FORMAT}'>\n",
        f"<title>{html.escape(title)}</title>\n",
        f"<style>{css}{_PAGE_CSS}</style>\n</head>\n<body>\n",
        "<div id='fmwidget-root'></div>\n",
        f"<script type='application/json' id='fmwidget-data'>{_json(data)}</script>\n",
    ]
    parts += [
        f"<script type='application/octet-stream' id='fmwidget-blob-{i}'>{blob}</script>\n"
        for i, blob in enumerate(blobs)
    ]
    parts.append(f"<script>{script}</script>\n</body>\n</html>\n")
    path.write_text("".join(parts), encoding="utf-8")
    return path


def _asset(name: str, closing: str) -> str:
    """A built front-end file, checked to be safe inside its element."""
    file = _STATIC / name
    if not file.exists():
        raise RuntimeError(
            f"the front-end file {file} is missing: build it with `npm run build` "
            "(or reinstall fmwidget)"
        )
    text = file.read_text(encoding="utf-8")
    if closing in text.lower():
        raise RuntimeError(f"{file} contains {closing!r} and cannot be inlined; rebuild it")
    return text


def _json(value: Any) -> str:
    """JSON safe inside ``<script>``: no ``<``, ``>`` or ``&`` (so no ``</script>``), no NaN."""
    text = json.dumps(_finite(value), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    for char, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(char, escaped)
    return text


def _finite(value: Any) -> Any:
    """``value`` with every NaN or ±Inf float replaced by None (JSON has no such numbers)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
