"""fmwidget.scan against a brute-force reference; files, bad input, interrupts, memory, ranks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from fmwidget.analysis import group_differences
from fmwidget.capture import capture
from fmwidget.names import UnknownLayerError
from fmwidget.receptive import receptive_field
from fmwidget.scan import Scan, ScanMismatchError, scan
from tests.models import ReusedNet, assert_no_hooks, flags
from tests.scan_data import Noise, model

ROOT = Path(__file__).resolve().parents[1]


def _all(data: Noise) -> tuple[torch.Tensor, torch.Tensor]:
    items = [data[i] for i in range(len(data))]
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])


def _check_against_brute_force(
    result: Scan, net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor
) -> None:
    reference = capture(net, x)  # copies what in-place ops would overwrite
    assert result.layers == list(reference)
    n = x.shape[0]
    for name in result.layers:
        maps = reference[name].flatten(2)
        score, pos = maps.max(-1)  # the first row-major argmax
        width = reference[name].shape[-1]
        for c in range(maps.shape[1]):
            best = sorted(range(n), key=lambda i: (-score[i, c].item(), i))[: result.k]
            got = result.top(name, c)
            assert [e.index for e in got] == best, (name, c)
            for e in got:
                assert e.value == score[e.index, c].item()
                assert (e.row, e.col) == divmod(pos[e.index, c].item(), width)
        stats = result.stats(name)
        means = maps.mean(-1).double()
        np.testing.assert_allclose(stats["mean"], means.mean(0).numpy(), rtol=1e-6, atol=1e-9)
        np.testing.assert_array_equal(stats["max"], score.amax(0).double().numpy())
        np.testing.assert_allclose(stats["active"], (score > 0).double().mean(0).numpy())
        np.testing.assert_array_equal(stats["dead"], (score <= 0).all(0).numpy())
        labels = sorted(set(y.tolist()))
        assert result.labels == labels
        for row, label in enumerate(labels):
            np.testing.assert_allclose(
                result.class_means(name)[row], means[y == label].mean(0).numpy(), rtol=1e-6
            )


def test_top_k_positions_and_statistics_equal_a_brute_force_reference() -> None:
    # InplaceNet: bn1 is overwritten by an in-place ReLU, bn2 by `out += skip`, relu runs twice.
    data, net = Noise(40), model()
    before = flags(net)
    result = scan(net, data, k=4, batch_size=16, progress=False)
    assert result.num_images == 40 and result.complete
    assert "relu:2" in result.layers and "bn1" in result.layers
    _check_against_brute_force(result, net, *_all(data))
    # Ties go to the lower index: images 3 and 7 are the same.
    assert_no_hooks(net)
    assert flags(net) == before


def test_a_reused_module_gives_one_entry_per_call() -> None:
    torch.manual_seed(1)
    net = ReusedNet().eval()
    x = torch.randn(20, 4, 6, 6)
    result = scan(net, iter([x[:7], x[7:]]), k=3, progress=False)
    assert result.layers == ["conv", "act", "conv:2", "act:2", "conv:3", "act:3"]
    reference = capture(net, x)
    for name in result.layers:
        score = reference[name].flatten(2).amax(-1)
        for c in range(4):
            assert [e.value for e in result.top(name, c)] == sorted(
                score[:, c].tolist(), reverse=True
            )[:3]


def test_dataloaders_and_iterables_give_the_same_results_as_the_dataset() -> None:
    data, net = Noise(30), model()
    direct = scan(net, data, k=3, batch_size=7, progress=False)
    loaded = scan(net, DataLoader(data, batch_size=5), k=3, progress=False)
    x, y = _all(data)
    batches = scan(net, iter([(x[:13], y[:13]), (x[13:], y[13:])]), k=3, progress=False)
    for other in (loaded, batches):
        for name in direct.layers:
            for c in (0, 5):
                assert other.top(name, c) == direct.top(name, c)
            np.testing.assert_allclose(other.stats(name)["mean"], direct.stats(name)["mean"])
        assert other.labels == direct.labels == [0, 1, 2]


def test_labels_give_selectivity_and_effect_sizes() -> None:
    data, net = Noise(60), model()
    result = scan(net, data, layers=["conv2", "relu:2"], k=2, progress=False)
    x, y = _all(data)
    acts = capture(net, x)["relu:2"]
    # Cohen's d from the scan's sums equals the batch computation of fmwidget.analysis.
    d = group_differences(acts, y.tolist(), top_k=1, pair=(0, 1)).effect.double().numpy()
    np.testing.assert_allclose(result.effect("relu:2", 0, 1), d, rtol=1e-5, atol=1e-8)
    sel = result.selectivity("relu:2")
    assert sel.shape == (3, 8) and np.all(np.abs(sel) <= 1)
    best = result.selective("relu:2", 2, n=3)
    assert best == sorted(range(8), key=lambda c: (-sel[2, c], c))[:3]
    named = scan(
        net,
        data,
        layers=["conv2"],
        labels=["odd" if i % 2 else "even" for i in range(60)],
        progress=False,
    )
    assert named.labels == ["even", "odd"] and named.label_counts == [30, 30]
    assert named.label_examples[1][:3] == [1, 3, 5]


def test_save_and_load_round_trip_and_refuse_another_model(tmp_path: Path) -> None:
    data, net = Noise(20), model()
    result = scan(net, data, k=3, progress=False)
    path = tmp_path / "scan.safetensors"
    result.save(path)
    again = Scan.load(path, model=net)
    assert (again.layers, again.num_images, again.k, again.labels) == (
        result.layers,
        20,
        3,
        [0, 1, 2],
    )
    for name in result.layers:
        assert again.top(name, 1) == result.top(name, 1)
        np.testing.assert_array_equal(again.class_means(name), result.class_means(name))
    other = model()
    with torch.no_grad():
        next(other.parameters())[0, 0, 0, 0] += 1
    with pytest.raises(ScanMismatchError, match=r"made with another model.*values differ"):
        Scan.load(path, model=other)
    wider = r"another architecture: .*'conv1\.bias' is \[9\], was \[8\]"
    with pytest.raises(ScanMismatchError, match=wider):
        Scan.load(path, model=_Wider())
    (tmp_path / "not-a-scan.safetensors").write_bytes(path.read_bytes()[:20])
    with pytest.raises(Exception):  # noqa: B017 - safetensors' own error for a broken file
        Scan.load(tmp_path / "not-a-scan.safetensors")


class _Wider(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 9, 3)


class _Keywords(torch.nn.Module):
    """Takes its image as a keyword, as dict items give it."""

    def __init__(self) -> None:
        super().__init__()
        self.net = model()

    def forward(self, *, pixels: torch.Tensor) -> torch.Tensor:
        return self.net(pixels)


def test_dict_items_are_keyword_inputs_with_an_optional_label() -> None:
    data = Noise(12)
    items = [{"pixels": x, "label": y} for x, y in (data[i] for i in range(12))]
    net = _Keywords().eval()
    result = scan(net, items, layers=["net.conv1"], k=2, progress=False)
    direct = scan(net.net, data, layers=["conv1"], k=2, progress=False)
    assert result.labels == [0, 1, 2]
    assert result.top("net.conv1", 3) == direct.top("conv1", 3)


def test_bad_input_fails_before_the_long_work_with_clear_errors() -> None:
    net = model()
    with pytest.raises(ValueError, match=r"no layer named 'cnov1'.*close names: 'conv1'"):
        scan(net, Noise(4), layers=["cnov1"], progress=False)
    with pytest.raises(ValueError, match="dataset is empty"):
        scan(net, Noise(0), progress=False)
    mixed = [(torch.randn(3, 8, 8), 0)] * 5 + [(torch.randn(3, 9, 9), 0)]
    with pytest.raises(
        ValueError, match=r"mixed shapes: item 0 is \(3, 8, 8\), item 5 is \(3, 9, 9\)"
    ):
        scan(net, mixed, progress=False)
    with pytest.raises(ValueError, match="labels= has 3 labels for a dataset of 4 items"):
        scan(net, Noise(4), labels=[0, 1, 2], progress=False)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        scan(net, Noise(4), k=0, progress=False)
    result = scan(net, Noise(4), progress=False)
    with pytest.raises(UnknownLayerError, match="close names: 'conv1'"):
        result.top("cnov1", 0)


class _Interrupted(Noise):
    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if index == 25:
            raise KeyboardInterrupt
        return super().__getitem__(index)


def test_an_interrupt_returns_a_consistent_partial_scan() -> None:
    net = model()
    partial = scan(net, _Interrupted(40), k=3, batch_size=5, progress=False)
    assert not partial.complete and partial.num_images == 25
    assert "interrupted" in repr(partial)
    full = scan(net, Noise(25), k=3, batch_size=5, progress=False)
    for name in full.layers:
        assert partial.top(name, 2) == full.top(name, 2)
    assert_no_hooks(net)


_PEAK = """
import resource, sys, torch
torch.set_num_threads(1)
from fmwidget.scan import scan
from tests.scan_data import Noise, model
scan(model(), Noise(int(sys.argv[1]), size=16), k=5, batch_size=32, progress=False)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def test_memory_does_not_grow_with_the_dataset() -> None:
    def peak_kib(n: int) -> int:
        out = subprocess.run(
            [sys.executable, "-c", _PEAK, str(n)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        return int(out.stdout.split()[-1])

    small, large = peak_kib(320), peak_kib(6400)
    # 20× the images: a per-image record of 14 layers × 8 channels would add 6 MiB and more.
    assert large - small < 4 * 1024, (small, large)


def test_two_processes_on_gloo_give_what_one_process_gives(tmp_path: Path) -> None:
    out = tmp_path / "ranks.safetensors"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(ROOT / "tests" / "scan_ranks.py"),
            str(out),
        ],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    single = scan(model(), Noise(45), k=5, batch_size=8, progress=False)
    for rank in (0, 1):
        merged = Scan.load(f"{out}.rank{rank}", model=model())
        assert merged.num_images == 45 and merged.labels == single.labels
        assert merged.label_counts == single.label_counts == [15, 15, 15]
        for name in single.layers:
            for c in range(8):
                assert merged.top(name, c) == single.top(name, c), (rank, name, c)
            for key, value in single.stats(name).items():
                np.testing.assert_allclose(merged.stats(name)[key], value, rtol=1e-6)
            np.testing.assert_allclose(
                merged.class_means(name), single.class_means(name), rtol=1e-6
            )


def test_crops_are_the_receptive_field_of_the_peak() -> None:
    data, net = Noise(12, size=16), model()
    result = scan(net, data, layers=["conv1", "conv2"], k=2, progress=False)
    ex = result.top("conv2", 0)[0]
    crop = result.crop("conv2", 0, 0, data, net)
    # Two 3×3 convolutions (padding 1): 5×5 around the peak, clipped at the border.
    top, left = max(0, ex.row - 2), max(0, ex.col - 2)
    assert crop.box == (top, left, min(16, ex.row + 3), min(16, ex.col + 3))
    # The ring sits on the input pixel the peak is centred on, also where the field is clipped.
    assert crop.peak == (ex.row - top, ex.col - left)
    corner = result.crops("conv1", 0, data, net)
    for c in corner:
        assert c.peak == (c.row - c.box[0], c.col - c.box[1])
    assert crop.pixels.shape == (crop.box[2] - top, crop.box[3] - left, 3)
    assert crop.picture.shape == crop.pixels.shape and (crop.picture != crop.pixels).any()


def test_receptive_field_of_a_resnet() -> None:
    import torchvision

    from fmwidget.receptive import fields_and_centres

    net = torchvision.models.resnet18().eval()
    x = torch.zeros(1, 3, 224, 224)
    assert receptive_field(net, x, "conv1", 50, 50) == (97, 97, 104, 104)  # 7×7, stride 2, pad 3
    assert receptive_field(net, x, "maxpool", 20, 20) == (75, 75, 86, 86)
    assert receptive_field(net, x, "layer4.1.conv2", 3, 3) == (0, 0, 224, 224)
    (_, centre), (_, corner) = fields_and_centres(net, x, "conv1", [(50, 50), (0, 0)])
    assert centre == (100, 100) and corner == (0, 0)
    assert_no_hooks(net)


def test_images_with_nan_rank_last_and_are_counted() -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1)).eval()
    x = torch.randn(5, 3, 4, 4)
    x[2, :, 1, 1] = float("nan")
    result = scan(net, iter([x]), k=5, progress=False)
    top = result.top("0", 0)
    assert [e.index for e in top][-1] == 2 and np.isnan(top[-1].value)
    assert all(np.isfinite(e.value) for e in top[:-1])
    stats = result.stats("0")
    assert list(stats["nonfinite"]) == [1, 1]
    finite = capture(net, x[[0, 1, 3, 4]])["0"].flatten(2)
    np.testing.assert_allclose(stats["mean"], finite.mean(-1).double().mean(0).numpy(), rtol=1e-6)
