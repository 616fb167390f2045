import numpy as np
import pytest
import torch
import torch_pruning as tp
from torch import nn
from torch.nn.utils import prune

from edgeprune import export, models
from edgeprune.errors import CheckpointError, ExportError

SHAPE = (1, 28, 28)


def _same_outputs(a: nn.Module, b: nn.Module, shape=SHAPE) -> float:
    x = torch.randn(4, *shape)
    a.eval(), b.eval()
    with torch.no_grad():
        return float((a(x) - b(x)).abs().max())


def test_save_load_round_trip(tmp_path):
    model = models.create("resnet20", num_classes=10, in_channels=1)
    export.save_model(model, tmp_path / "m.pt", extra={"input_shape": SHAPE})
    back, extra = export.load(tmp_path / "m.pt")
    assert extra == {"input_shape": SHAPE}
    assert _same_outputs(model, back) == 0.0


def test_physically_narrowed_model_rebuilds_without_pickled_code(tmp_path):
    torch.manual_seed(0)
    model = models.create("resnet20", num_classes=10, in_channels=1).eval()
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    stem, inner = convs[0], convs[9]  # the stem is coupled to every residual add of stage 1
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, *SHAPE))
    for name, idxs in ((stem, [0, 3, 5]), (inner, list(range(10)))):
        conv = model.get_submodule(name)
        dg.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=idxs).prune()
    widths = {n: model.get_submodule(n).out_channels for n in (stem, inner)}
    assert widths[stem] == 13
    export.save_model(model, tmp_path / "m.pt")
    payload = torch.load(tmp_path / "m.pt", weights_only=True)  # plain tensors and containers only
    assert payload["widths"][stem]["out_channels"] == 13
    back = export.load_model(tmp_path / "m.pt")
    assert {n: back.get_submodule(n).out_channels for n in (stem, inner)} == widths
    assert _same_outputs(model, back) == 0.0


def test_masks_are_baked_into_saved_weights(tmp_path):
    model = models.create("lenet5", num_classes=3, in_channels=1)
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    prune.l1_unstructured(conv, "weight", amount=0.5)
    export.save_model(model, tmp_path / "m.pt")
    back = export.load_model(tmp_path / "m.pt")
    saved = next(m for m in back.modules() if isinstance(m, nn.Conv2d))
    assert int((saved.weight == 0).sum()) == saved.weight.numel() // 2
    assert _same_outputs(model, back) == 0.0
    assert hasattr(conv, "weight_mask")  # saving did not strip the caller's masks


def test_onnx_matches_onnx_runtime_with_dynamic_batch(tmp_path):
    import onnxruntime as ort

    model = models.create("resnet20", num_classes=10, in_channels=1).eval()
    path = export.to_onnx(model, tmp_path / "m.onnx", SHAPE)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        x = torch.randn(batch, *SHAPE)
        out = sess.run(None, {"input": x.numpy()})[0]
        with torch.no_grad():
            np.testing.assert_allclose(out, model(x).numpy(), rtol=1e-3, atol=1e-4)


class _Unexportable(nn.Module):
    """ONNX has no singular value decomposition."""

    def forward(self, x):
        return torch.linalg.svd(x.view(-1, 2, 2))[1]


def test_failed_export_names_the_operator_and_writes_nothing(tmp_path):
    target = tmp_path / "m.onnx"
    target.write_bytes(b"users file")
    with pytest.raises(ExportError) as e:
        export.to_onnx(_Unexportable(), target, (4,))
    assert "aten::linalg_svd" in str(e.value)
    assert target.read_bytes() == b"users file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "not-edgeprune"])
def test_corrupt_model_file_is_a_clear_error(tmp_path, damage):
    path = tmp_path / "m.pt"
    export.save_model(models.create("lenet5", 10, 1), path)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00" * 100)
    else:
        torch.save({"weights": torch.zeros(1)}, path)
    before = path.read_bytes()
    with pytest.raises(CheckpointError) as e:
        export.load_model(path)
    assert str(path) in str(e.value)
    assert path.read_bytes() == before
