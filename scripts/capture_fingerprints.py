"""What fmwidget.capture gives on ~140 real architectures, as one JSON: to check that a change of
the capture's code changes nothing it returns.

For every torchvision classification model and 60 timm models (random weights, seed 0, eval mode,
batch 1, 64×64; transformers at their own input size): each layer's name and a hash of its values
(derived layers computed), the report's LayerInfo fields, skipped modules and notes, which layers
are derived and which were dropped; or the error. Run it with two checkouts and compare:

    PYTHONPATH=/path/to/old python scripts/capture_fingerprints.py old.json
    PYTHONPATH=. python scripts/capture_fingerprints.py new.json
    python scripts/capture_fingerprints.py --compare old.json new.json

About two minutes on one core.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import warnings
from typing import Any

TIMM = [
    "resnet18",
    "efficientnet_b0",
    "mobilenetv3_small_050",
    "convnext_atto",
    "regnetx_002",
    "regnety_002",
    "ghostnet_050",
    "mixnet_s",
    "rexnet_100",
    "dla34",
    "densenet121",
    "dpn68",
    "hrnet_w18_small",
    "cspresnet50",
    "res2net50_14w_8s",
    "resnest14d",
    "selecsls42b",
    "tf_efficientnetv2_b0",
    "lcnet_050",
    "mobilevit_xxs",
    "efficientvit_b0",
    "repvgg_a0",
    "vgg11_bn",
    "inception_v3",
    "xception41",
    "nfnet_l0",
    "vit_tiny_patch16_224",
    "deit_tiny_patch16_224",
    "swin_tiny_patch4_window7_224",
    "poolformer_s12",
    "coat_lite_tiny",
    "levit_128s",
    "edgenext_xx_small",
    "convmixer_768_32",
    "fbnetc_100",
    "mnasnet_050",
    "semnasnet_050",
    "tinynet_e",
    "hardcorenas_a",
    "spnasnet_100",
    "gernet_s",
    "resnetv2_50",
    "seresnext26d_32x4d",
    "skresnet18",
    "ecaresnet26t",
    "darknet17",
    "cspdarknet53",
    "vovnet39a",
    "ese_vovnet19b_dw",
    "tresnet_m",
    "mobileone_s0",
    "fastvit_t8",
    "efficientformer_l1",
    "maxvit_nano_rw_256",
    "coatnet_nano_rw_224",
    "inception_next_tiny",
    "hgnet_tiny",
    "rdnet_tiny",
    "starnet_s1",
    "mambaout_femto",
]

# timm models that only take their own input size.
_OWN_SIZE = (
    "vit",
    "deit",
    "swin",
    "levit",
    "maxvit",
    "coat",
    "efficientformer",
    "mobilevit",
    "fastvit",
)


def _inputs(lib: str, name: str, model: Any) -> Any:
    import torch

    size = 96 if name.startswith(("inception", "googlenet")) else 64
    if lib == "timm" and any(part in name for part in _OWN_SIZE):
        size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size", (3, 224, 224))[-1]
    if lib == "tv" and name.startswith(("swin", "maxvit")):
        size = 224
    return torch.randn(1, 3, size, size)


def fingerprint(lib: str, name: str) -> dict[str, Any]:
    import timm
    import torch
    import torchvision

    import fmwidget

    torch.manual_seed(0)
    if lib == "tv":
        extra = {"image_size": 64} if name.startswith("vit_") else {}
        model = torchvision.models.get_model(name, weights=None, **extra)
    else:
        model = timm.create_model(name, pretrained=False)
    model.eval()
    x = _inputs(lib, name, model)
    with torch.no_grad():
        cap = fmwidget.capture(model, x)
    values = {
        layer: hashlib.sha1(cap[layer].contiguous().numpy().tobytes()).hexdigest()[:16]
        for layer in cap
    }
    return {
        "layers": values,
        "infos": [json.loads(json.dumps(dataclasses.asdict(i))) for i in cap.report.captured],
        "derived": sorted(cap.derived),
        "dropped": list(cap.dropped),
        "skipped": [list(s) for s in cap.report.skipped],
        "notes": cap.report.notes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", help="the JSON to write")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), help="compare two JSONs")
    args = parser.parse_args()
    if args.compare:
        loaded = []
        for path in args.compare:
            with open(path) as f:
                loaded.append(json.load(f))
        a, b = loaded
        differ = [
            f"{key}: {field}"
            for key in sorted(set(a) | set(b))
            for field in sorted(set(a.get(key, {})) | set(b.get(key, {})))
            if a.get(key, {}).get(field) != b.get(key, {}).get(field)
        ]
        print(f"{len(a)} and {len(b)} architectures; {len(differ)} differences")
        print("\n".join(differ))
        sys.exit(1 if differ else 0)
    if not args.out:
        parser.error("name the JSON to write, or --compare A B")
    import torch
    import torchvision

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    names = [("tv", n) for n in torchvision.models.list_models(module=torchvision.models)]
    names += [("timm", n) for n in TIMM]
    out: dict[str, Any] = {}
    for lib, name in names:
        try:
            out[f"{lib}:{name}"] = fingerprint(lib, name)
        except Exception as exc:  # recorded: the same error before and after is no difference
            out[f"{lib}:{name}"] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
        print(f"{lib}:{name}", "error" if "error" in out[f"{lib}:{name}"] else "ok", flush=True)
    with open(args.out, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
