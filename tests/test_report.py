import csv
import json
import re

import pytest
from matplotlib import image

from edgeprune import report
from edgeprune.errors import ConfigError

# A toy network: two conv layers and a classifier, 10,000 prunable weights in all.
DENSE_LAYERS = [("conv1", [16, 1, 10, 10]), ("conv2", [32, 16, 3, 3]), ("fc", [10, 488])]


def profile(model="net", prunable_nonzero=10_000, prunable=10_000, latency_ms=1.0, accuracy=0.9, data="fashion-mnist"):
    latency = [{"runtime": "onnxruntime", "batch_size": b, "threads": t, "p50_ms": latency_ms * b / t,
                "p90_ms": 1.1 * latency_ms * b / t, "p99_ms": 1.2 * latency_ms * b / t,
                "mean_ms": latency_ms * b / t, "runs": 30, "warmup": 5} for b in (1, 32) for t in (1, 2)]
    return {"model": model, "input_shape": [1, 28, 28], "params": prunable + 500,
            "nonzero_params": prunable_nonzero + 500, "prunable_params": prunable,
            "prunable_nonzero": prunable_nonzero, "macs": 100 * prunable, "effective_macs": 100 * prunable_nonzero,
            "bytes_fp32": 4 * (prunable + 500) + 1000, "bytes_gzip": 4 * prunable_nonzero + 1000,
            "latency": latency, "peak_memory_mb": None, "accuracy": accuracy,
            "accuracy_data": None if accuracy is None else data, "environment": {},
            "sparsity": 1 - prunable_nonzero / prunable}


def layers(density, shapes=DENSE_LAYERS):
    rows = []
    for name, shape in shapes:
        n = 1
        for s in shape:
            n *= s
        rows.append({"layer": name, "shape": shape, "weights": n, "kept": round(density * n), "density": density})
    return rows


def config(command="train", method=None, data="fashion-mnist", seed=0):
    return {"command": command, "model": "net", "data": {"name": data, "batch_size": 128},
            "train": {"epochs": 2, "seed": seed}, "measure": {}, "model_kwargs": {}, "method": method or {},
            "device": "cpu"}


def write_run(folder, report_, config_):
    folder.mkdir(parents=True)
    (folder / "report.json").write_text(json.dumps(report_))
    (folder / "config.json").write_text(json.dumps(config_))
    return folder


def dense_run(folder, data="fashion-mnist", accuracy=0.9, synthetic=False):
    return write_run(folder, {"run": folder.name, "data": data, "synthetic_data": synthetic,
                              "train": {"epochs": [], "seconds": 12.0},
                              "profile": profile(accuracy=accuracy, data=data)}, config(data=data))


def pai_run(folder, criterion, sparsity, accuracy):
    opts = {"criterion": criterion, "sparsity": sparsity, "scope": "global", "rounds": None}
    return write_run(folder, {
        "run": folder.name, "data": "fashion-mnist", "synthetic_data": False, "method": "pai", "options": opts,
        "prune_seconds": 0.01, "layers": layers(1 - sparsity), "train": {"epochs": [], "seconds": 10.0},
        "profile": profile(prunable_nonzero=round(10_000 * (1 - sparsity)), latency_ms=0.9, accuracy=accuracy),
    }, config("prune", {"name": criterion, "sparsity": sparsity}))


def reconvene_run(folder, sparsity, accuracy):
    opts = {"criterion": "snip", "sparsity": sparsity, "scope": "global", "rounds": None, "conversion": "width",
            "reference": "global", "round_to": None}
    narrow = [("conv1", [16, 1, 10, 10]), ("conv2", [8, 16, 3, 3]), ("fc", [10, 488])]
    kept = round(10_000 * (1 - sparsity))
    return write_run(folder, {
        "run": folder.name, "data": "fashion-mnist", "synthetic_data": False, "method": "reconvene",
        "options": opts, "prune_seconds": 0.05, "pai": {"layers": layers(1 - sparsity)},
        "groups": [{"layers": ["conv1"], "sparsity": 0.5, "sensitive": True, "width_before": 16, "width_after": 16},
                   {"layers": ["conv2", "fc"], "sparsity": 0.9, "sensitive": False, "width_before": 32,
                    "width_after": 8}],
        "layers": layers(1 - sparsity, narrow), "train": {"epochs": [], "seconds": 9.0},
        "profile": profile(prunable_nonzero=kept, prunable=9000, latency_ms=0.5, accuracy=accuracy),
    }, config("prune", {"name": "reconvene", "criterion": "snip", "sparsity": sparsity, "conversion": "width"}))


def imp_run(folder, densities=(1.0, 0.5, 0.25)):
    opts = {"levels": len(densities) - 1, "fraction": 0.5, "rewind_iter": 0, "scope": "global"}
    levels = []
    for level, d in enumerate(densities):
        lv = {"run": f"level_{level:02d}", "data": "fashion-mnist", "synthetic_data": False, "method": "imp",
              "level": level, "density": d, "options": opts, "layers": layers(d),
              "train": {"epochs": [], "seconds": 11.0},
              "profile": profile(prunable_nonzero=round(10_000 * d), accuracy=0.9 - 0.05 * level)}
        write_run(folder / f"level_{level:02d}", lv, {})
        (folder / f"level_{level:02d}" / "config.json").unlink()  # levels share their run's config
        levels.append({"level": level, "density": d, "profile": lv["profile"]})
    (folder / "report.json").write_text(json.dumps({"run": folder.name, "data": "fashion-mnist", "method": "imp",
                                                    "options": opts, "levels": levels}))
    (folder / "config.json").write_text(json.dumps(config("prune", {"name": "imp", **opts})))
    return folder


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    sweep = root / "sweep" / "net"
    dense_run(sweep / "dense")
    for s, acc in ((0.5, 0.88), (0.9, 0.80)):
        pai_run(sweep / f"magnitude-{s}", "magnitude", s, acc)
        reconvene_run(sweep / f"reconvene-{s}", s, acc + 0.01)
    imp_run(sweep / "imp")
    (sweep / "unfinished").mkdir()
    (sweep / "unfinished" / "config.json").write_text(json.dumps(config("prune")))
    cifar = dense_run(root / "other" / "cifar-dense", data="cifar10", accuracy=0.6)
    synth = dense_run(root / "other" / "synth-dense", data="synthetic", accuracy=None, synthetic=True)
    out = root / "report"
    written = report.write_report([root / "sweep", cifar, synth], out, title="test report")
    return root, out, written


def csv_rows(path):
    with open(path, newline="") as f:
        return {r["run"]: r for r in csv.DictReader(f)}


def test_collect_reads_runs_sweeps_and_imp_levels(built):
    root, _, _ = built
    rows = report.collect([root / "sweep"])
    names = [r.name for r in rows]
    assert "imp/level_00" in names and "imp/level_02" in names and "unfinished" not in names
    assert len(rows) == 1 + 4 + 3
    methods = {r.name: r.method for r in rows}
    assert methods["dense"] == "dense" and methods["magnitude-0.9"] == "magnitude"
    assert methods["reconvene-0.9"] == "reconvene-width-snip" and methods["imp/level_01"] == "imp"
    by = {r.name: r for r in rows}
    assert by["imp/level_02"].sparsity_requested == pytest.approx(0.75)
    assert by["reconvene-0.9"].dense_layers["conv2"] == [32, 16, 3, 3]  # its dense original, not its own


def test_csv_has_one_row_per_run_and_ratios_to_dense(built):
    root, out, written = built
    rows = csv_rows(written["csv"])
    assert len(rows) == 1 + 4 + 3 + 2
    m9 = rows["magnitude-0.9"]
    assert float(m9["compression_x"]) == pytest.approx(10.0)
    assert float(m9["speedup_x"]) == pytest.approx(1 / 0.9)
    assert float(m9["accuracy_delta_pts"]) == pytest.approx(-10.0)
    assert float(m9["sparsity_requested"]) == 0.9 and m9["dense_run"] == "dense"
    assert float(m9["latency_ms_ort_b32_t2"]) == pytest.approx(0.9 * 16)  # every (batch, threads) measured
    assert float(rows["reconvene-0.9"]["size_x_fp32"]) == pytest.approx((4 * 10_500 + 1000) / (4 * 9500 + 1000))
    # the cifar10 run has no dense run of its own data set but itself: never compared to fashion-mnist
    assert rows["cifar-dense"]["dense_run"] == "cifar-dense"
    assert float(rows["cifar-dense"]["compression_x"]) == 1.0
    assert rows["synth-dense"]["accuracy"] == "" and rows["synth-dense"]["accuracy_delta_pts"] == ""


def test_files_exist_and_pngs_decode_at_their_size(built):
    _, out, written = built
    assert {"csv", "md", "html"} <= set(written)
    pngs = {k: p for k, p in written.items() if p.suffix == ".png"}
    assert all(p.parent == out and p.exists() for p in written.values())
    assert {"fashion-mnist-accuracy-vs-sparsity", "fashion-mnist-accuracy-vs-latency",
            "fashion-mnist-accuracy-vs-size", "cifar10-accuracy-vs-size"} <= set(pngs)
    assert not any(k.startswith("synthetic-accuracy") for k in pngs)  # no accuracy to plot
    layer_figs = {k for k in pngs if "-layers-" in k}
    # the sparsest run of each pruning method
    assert layer_figs == {"fashion-mnist-layers-magnitude-0.9", "fashion-mnist-layers-reconvene-0.9",
                          "fashion-mnist-layers-imp-level_02"}
    for k, p in pngs.items():
        h, w = image.imread(p).shape[:2]
        tall = k.endswith("reconvene-0.9")  # a second panel: channel widths per group
        assert (w, h) == (840, 960 if tall else 540), k


def test_html_is_self_contained_and_holds_every_run(built):
    root, _, written = built
    page = written["html"].read_text()
    names = csv_rows(written["csv"]).keys()
    assert all(f"<td>{n}</td>" in page for n in names)
    pngs = [p for p in written.values() if p.suffix == ".png"]
    assert page.count("<img ") == len(pngs) == page.count("data:image/png;base64,")
    assert "src=\"http" not in page and "<link" not in page
    assert "never mixed" in page and "synthetic data" in page and "unfinished" in page.lower()


def test_data_sets_are_never_mixed(built):
    _, _, written = built
    md = written["md"].read_text()
    sections = dict(re.findall(r"## Data set: (\S+)\n(.*?)(?=\n## |\Z)", md, re.S))
    assert set(sections) == {"fashion-mnist", "cifar10", "synthetic"}
    assert "cifar-dense" not in sections["fashion-mnist"] and "magnitude-0.9" in sections["fashion-mnist"]
    assert "magnitude" not in sections["cifar10"] and "fashion-mnist-" not in sections["cifar10"]
    assert "(ms)" in md and "(MiB)" in md and "accuracy (%)" in md  # units in the headers
    page = written["html"].read_text()
    cifar = page[page.index('<section id="data-cifar10">'):]
    cifar = cifar[:cifar.index("</section>")]
    assert "magnitude" not in cifar and "cifar-dense" in cifar


def test_layer_runs_choose_the_figures(built, tmp_path):
    root, _, _ = built
    written = report.write_report([root / "sweep"], tmp_path / "r", layer_runs=["magnitude-0.5"])
    assert [k for k in written if "-layers-" in k] == ["fashion-mnist-layers-magnitude-0.5"]
    with pytest.raises(ConfigError, match="nope"):
        report.write_report([root / "sweep"], tmp_path / "r2", layer_runs=["nope"])


def test_pareto_front():
    pts = [(1.0, 80), (2.0, 85), (1.5, 79), (3.0, 85), (0.5, 70), (2.0, 90)]
    assert report.pareto_front(pts) == [4, 0, 5]


def test_bad_paths_raise_config_errors(built, tmp_path):
    root, _, _ = built
    with pytest.raises(ConfigError, match="nowhere"):
        report.collect([tmp_path / "nowhere"])
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"empty.*config\.json"):
        report.collect([empty])
    with pytest.raises(ConfigError, match="no finished runs"):
        report.collect([root / "sweep" / "net" / "unfinished"])
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ConfigError, match="file.txt"):
        report.collect([tmp_path / "file.txt"])
    with pytest.raises(ConfigError, match="run folder"):
        report.write_report([root / "sweep"], root / "sweep" / "net" / "dense")


# Pairs: structured runs against their counterparts


@pytest.fixture(scope="module")
def paired(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    dense_run(root / "dense")
    pai_run(root / "snip-0.9", "snip", 0.9, 0.80)
    pai_run(root / "magnitude-0.9", "magnitude", 0.9, 0.79)  # another criterion: not snip's counterpart
    reconvene_run(root / "reconvene-0.9", 0.9, 0.797)  # -0.3 points: within the default tolerance
    reconvene_run(root / "reconvene-0.5", 0.5, 0.85)  # no snip-0.5 run: no pair
    seed1 = reconvene_run(root / "reconvene-0.9-seed1", 0.9, 0.81)  # another budget: no pair
    cfg = json.loads((seed1 / "config.json").read_text())
    cfg["train"]["seed"] = 1
    (seed1 / "config.json").write_text(json.dumps(cfg))
    imp_run(root / "imp")
    write_run(root / "imp-shrunk", {
        "run": "imp-shrunk", "data": "fashion-mnist", "synthetic_data": False, "method": "dnnshifter",
        "source": str(root / "imp" / "level_02"), "shrink_seconds": 0.2, "layers": [],
        "profile": profile(prunable_nonzero=2500, prunable=5000, latency_ms=0.25, accuracy=0.75)},
        config("shrink", {"name": "dnnshifter", "source": str(root / "imp" / "level_02")}))
    return root


def test_pairs_match_criterion_sparsity_and_budget(paired):
    rows = report.collect([paired])
    found = {p.run.name: p.counterpart.name for p in report.pairs(rows)}
    assert found == {"reconvene-0.9": "snip-0.9", "imp-shrunk": "imp/level_02"}
    p = next(p for p in report.pairs(rows) if p.run.name == "reconvene-0.9")
    assert p.size_x == pytest.approx((4 * 10_500 + 1000) / (4 * 9500 + 1000))
    assert p.macs_x == pytest.approx(10_000 / 9000) and p.latency_x() == pytest.approx(0.9 / 0.5)
    assert p.latency_x(32, 2) == pytest.approx(0.9 / 0.5)
    assert p.efficiency == pytest.approx((0.9 / 0.5) / (10_000 / 9000))
    assert p.accuracy_delta == pytest.approx(-0.3)
    shrunk = next(p for p in report.pairs(rows) if p.run.name == "imp-shrunk")
    assert shrunk.latency_x() == pytest.approx(4.0) and shrunk.accuracy_delta == pytest.approx(-5.0)
    lines = report.headline(report.pairs(rows))
    assert "imp-shrunk" not in lines[0]  # 5 points below its source: outside the 0.5-point tolerance
    assert "1.80× faster at batch 1 (reconvene-0.9, -0.30 points)" in lines[0] and "1 of 2" in lines[0]
    assert "no structured run" in report.headline(report.pairs(rows), tolerance=0.1)[0]


def test_report_writes_the_pairs_table(paired, tmp_path):
    written = report.write_report([paired], tmp_path / "r", tolerance=0.5)
    pairs_csv = {r["run"]: r for r in csv.DictReader(open(written["pairs"], newline=""))}
    assert set(pairs_csv) == {"reconvene-0.9", "imp-shrunk"}
    assert pairs_csv["reconvene-0.9"]["counterpart"] == "snip-0.9"
    assert float(pairs_csv["imp-shrunk"]["size_x_fp32"]) == pytest.approx((4 * 10_500 + 1000) / (4 * 5500 + 1000))
    assert float(pairs_csv["reconvene-0.9"]["latency_x_b32_t2"]) == pytest.approx(1.8)
    md = written["md"].read_text()
    assert "### Structured runs against their counterparts" in md and "| reconvene-0.9 | snip-0.9 |" in md
    assert "1 of 2 structured runs qualify" in md
    # what the accuracies were trained with, from the configs: one budget, run with two seeds
    assert re.search(r"net on fashion-mnist \(batch_size 128\): 2 epoch\(s\).*?; seed\(s\) 0, 1\.", md)
    assert "<h3>Structured runs against their counterparts</h3>" in written["html"].read_text()
    with pytest.raises(ConfigError, match="tolerance"):
        report.write_report([paired], tmp_path / "r2", tolerance=-1)


def test_no_pairs_no_pairs_table(built):
    _, out, written = built
    assert "pairs" not in written and not (out / "pairs.csv").exists()


def test_retime_replaces_latencies_and_leaves_runs_alone(tmp_path, tiny, capsys):
    from edgeprune.export import to_onnx_bytes

    onnx = to_onnx_bytes(tiny, (1, 8, 8))
    for name in ("dense", "snip-0.9"):
        run = dense_run(tmp_path / "runs" / name) if name == "dense" else pai_run(tmp_path / "runs" / name, "snip",
                                                                                    0.9, 0.8)
        (run / "model.onnx").write_bytes(onnx)
        prof = json.loads((run / "report.json").read_text())
        prof["profile"]["input_shape"] = [1, 8, 8]
        (run / "report.json").write_text(json.dumps(prof))
    pai_run(tmp_path / "runs" / "no-onnx", "magnitude", 0.5, 0.85)
    before = {p: p.read_bytes() for p in (tmp_path / "runs").rglob("*") if p.is_file()}
    rows = report.collect([tmp_path / "runs"])
    seen = []
    info = report.retime(rows, report.Retime(rounds=2, runs=3, warmup=1, settings=((1, 1),)),
                         progress=lambda task, done, total: seen.append((task, done, total)))
    task = "re-timing 2 models, batch 1, 1 thread(s)"
    assert seen == [(task, 0, 2), (task, 1, 2), (task, 2, 2)]  # the caller draws; the library prints nothing
    assert capsys.readouterr() == ("", "")
    assert info["settings"] == [[1, 1]] and info["models"] == 2 and info["without_onnx"] == ["no-onnx"]
    by = {r.name: r for r in rows}
    fresh = by["snip-0.9"].profile.latency_of("onnxruntime", 1, 1)
    assert fresh.runs == 6 and fresh.p50_ms != pytest.approx(0.9)  # re-measured, not the recorded 0.9 ms
    # stale timings (other settings; a run that cannot be re-timed) are dropped, never set beside fresh ones
    assert by["snip-0.9"].latency_ms("onnxruntime", 32, 2) is None
    assert by["no-onnx"].latency_ms("onnxruntime", 1, 1) is None
    written = report.write_report([tmp_path / "runs"], tmp_path / "rep", retime_opts=report.Retime(rounds=1, runs=2))
    assert capsys.readouterr() == ("", "")  # no progress asked for: nothing drawn
    assert "re-measured for all 2 models in one interleaved pass" in written["md"].read_text()
    assert "Not re-measured (no model.onnx): no-onnx." in written["md"].read_text()
    assert {p: p.read_bytes() for p in (tmp_path / "runs").rglob("*") if p.is_file()} == before
    with pytest.raises(ConfigError, match="rounds >= 1"):
        report.Retime(rounds=0)


def int8_copy(source, name, accuracy_loss=0.002):
    """What `edgeprune quantize` writes: the source's report with an INT8 model.onnx a quarter of its size."""
    rep = json.loads((source / "report.json").read_text())
    p = rep["profile"]
    p.update(precision="int8", bytes_onnx=p["bytes_onnx"] // 4, bytes_onnx_gzip=p["bytes_onnx_gzip"] // 4,
             accuracy=p["accuracy"] - accuracy_loss, accuracy_runtime="onnxruntime")
    cfg = json.loads((source / "config.json").read_text())
    cfg.update(command="quantize", method={"name": "quantize", "source": str(source), "mode": "static"})
    return write_run(source.parent / name, {**rep, "run": name, "source": str(source), "profile": p}, cfg)


def with_onnx(folder, raw, gz):
    rep = json.loads((folder / "report.json").read_text())
    rep["profile"].update(bytes_onnx=raw, bytes_onnx_gzip=gz, accuracy_runtime="torch")
    (folder / "report.json").write_text(json.dumps(rep))
    return folder


def test_int8_runs_pair_with_their_fp32_source_and_reconvene_int8_with_the_unstructured_fp32(tmp_path):
    dense = with_onnx(dense_run(tmp_path / "dense"), 42_000, 40_000)
    snip = with_onnx(pai_run(tmp_path / "snip-0.9", "snip", 0.9, 0.80), 42_000, 8_000)
    rec = with_onnx(reconvene_run(tmp_path / "reconvene-0.9", 0.9, 0.797), 6_000, 5_000)
    for run in (dense, snip, rec):
        int8_copy(run, f"{run.name}-int8")
    int8_copy(dense, "a-dense-int8")  # listed before the fp32 dense run: still not the ratios' reference
    rows = {r.name: r for r in report.collect([tmp_path])}
    assert {r.dense_run for r in rows.values()} == {"dense"}
    assert rows["reconvene-0.9-int8"].size_x_onnx == pytest.approx(42_000 / 1_500)
    found = {p.run.name: p.counterpart.name for p in report.pairs(list(rows.values()))}
    assert found == {"reconvene-0.9": "snip-0.9", "reconvene-0.9-int8": "snip-0.9", "dense-int8": "dense",
                     "a-dense-int8": "dense", "snip-0.9-int8": "snip-0.9"}
    p = next(p for p in report.pairs(list(rows.values())) if p.run.name == "reconvene-0.9-int8")
    assert (p.onnx_x, p.onnx_gzip_x) == (pytest.approx(28.0), pytest.approx(8_000 / 1_250))
    assert p.accuracy_delta == pytest.approx(-0.5)
    lines = report.headline(report.pairs(list(rows.values())))
    assert "2 structured runs qualify" in lines[0]  # the Reconvene runs; an INT8 copy beside its source is not one
    written = report.write_report([tmp_path], tmp_path / "out")
    results = csv_rows(written["csv"])
    assert (results["dense-int8"]["precision"], results["dense-int8"]["accuracy_runtime"]) == ("int8", "onnxruntime")
    assert int(results["dense-int8"]["bytes_onnx"]) == 10_500 and float(results["dense-int8"]["size_x_onnx"]) == 4.0
    assert results["dense"]["accuracy_runtime"] == "torch"


def test_compare_table_names_precision_runtime_and_onnx_sizes(tmp_path):
    from rich.console import Console

    from edgeprune.measure import Profile

    fp32 = Profile.from_dict({**profile(), "bytes_onnx": 4 * 2**20, "bytes_onnx_gzip": 3 * 2**20,
                              "accuracy_runtime": "torch"})
    int8 = Profile.from_dict({**profile(accuracy=0.895), "bytes_onnx": 2**20, "bytes_onnx_gzip": 2**19,
                              "precision": "int8", "accuracy_runtime": "onnxruntime"})
    console = Console(width=200, record=True)
    console.print(report.profile_table({"fp32": fp32, "int8": int8}))
    text = console.export_text()
    assert re.search(r"precision \(model.onnx\)\s+│\s+fp32\s+│\s+int8", text)
    assert "90.00 % (torch)" in text and "89.50 % (onnxruntime)" in text
    assert "4.00 / 3.00 MiB" in text and "4.00× / 6.00×" in text
    line = report.verdicts({"fp32": fp32, "int8": int8}, "side by side")[0]
    assert "model.onnx 4.0× smaller (fp32 → int8; gzip 6.0×" in line
    assert "accuracy -0.5 points (onnxruntime vs torch)" in line


def test_the_training_budget_names_bf16_and_counts_fp32_as_before():
    from edgeprune.report.collect import _training

    train = {"epochs": 30, "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "schedule": "cosine", "seed": 0}
    before = _training({"data": {"name": "cifar10"}, "train": train})  # a run recorded before there was a choice
    fp32 = _training({"data": {"name": "cifar10"}, "train": {**train, "precision": "fp32"}})
    bf16 = _training({"data": {"name": "cifar10"}, "train": {**train, "precision": "bf16"}})
    assert fp32 == before and "autocast" not in fp32.schedule
    assert bf16.key != fp32.key and bf16.schedule.endswith("cosine schedule, bf16 autocast")
