"""``retr eval --expand``: query expansion scored at every grid point. At a level, the grid's scores equal the
expansion functions applied by hand to the decoded vectors and ranked by eval/metrics; the report has the gain
columns; a classification dataset, an unknown method and an approximate index are refused in one line."""

import json
import zlib

import numpy as np
import pytest
from conftest import family_base, run

from retr.eval import metrics, run as eval_run, stress
from retr.eval.datasets import RetrievalDataset
from retr.retrieval import codec, expansion
from retr.retrieval.encoder import EncoderConfig
from retr.retrieval.errors import ConfigError

FAST = EncoderConfig.create("alexnet", "none", pooling="mac")  # random weights: no download
METHODS = ("aqe", "dba", "diffusion")


def clustered(rng, n_clusters, per, d, noise):
    """``n_clusters * per`` vectors around random centres (cluster-major), and their cluster ids."""
    centres = rng.standard_normal((n_clusters, d))
    x = np.repeat(centres, per, 0) + noise * rng.standard_normal((n_clusters * per, d))
    return x.astype(np.float32), np.repeat(np.arange(n_clusters), per)


def arrays_dataset(protocols, gnd, n_db):
    """A RetrievalDataset over arrays: only its ground truth and protocols are read by the score function."""
    return RetrievalDataset("arrays", None, [None] * n_db, [None] * len(gnd), gnd, protocols, query_in_db=False)


def decoded(xdb, xq, h):
    """The grid's Q-2 point at h levels, computed by hand: a codec fitted on the database, decode(encode(.)),
    L2-normalised as the grid normalises."""
    params = codec.fit(xdb, codec.CodecConfig(reduction="none", quantizer="q2", levels=h))
    return tuple(stress.l2_normalize(codec.decode(params, codec.encode(params, x))) for x in (xdb, xq))


def rankings(yb, yq):
    """Plain search and each expansion of retrieval/expansion.py by hand: ``{name: (n_db, n_q)}`` (revisitop's
    layout, as eval/metrics reads it)."""
    plain = np.argsort(-(yq @ yb.T), axis=1, kind="stable")
    return {
        "plain": plain.T,
        "aqe": np.argsort(-(expansion.aqe(yq, yb, plain[:, :2]) @ yb.T), axis=1, kind="stable").T,
        "dba": np.argsort(-(yq @ expansion.dba(yb).T), axis=1, kind="stable").T,
        "diffusion": np.argsort(-expansion.diffusion(yq, yb), axis=1, kind="stable").T,
    }


def test_revisited_protocols_at_a_level_equal_the_functions_by_hand():
    rng = np.random.default_rng(0)
    xdb, cdb = clustered(rng, 6, 8, 24, 0.9)
    xq, cq = clustered(rng, 6, 2, 24, 0.9)
    gnd = []
    for c in cq:
        members = np.flatnonzero(cdb == c)
        gnd.append({"easy": members[:4], "hard": members[4:7], "junk": members[7:]})
    ds = arrays_dataset(("easy", "medium", "hard"), gnd, len(xdb))
    grid = stress.run_grid(xdb, xq, eval_run.retrieval_scores(ds, expand=("diffusion", "aqe", "dba")), ["q2"],
                           levels=[2, 4], progress=False)
    assert grid.metric_names == ["easy", "medium", "hard"] and set(grid.baseline) == {"easy", "medium", "hard"}
    point = next(p for p in grid.points if p.experiment == "q2" and p.levels == 4)
    ranks = rankings(*decoded(xdb, xq, 4))
    for method in ("plain",) + METHODS:
        want = metrics.revisited_protocols(ranks[method], gnd)
        for protocol in ("easy", "medium", "hard"):
            name = protocol if method == "plain" else f"{method}:{protocol}"
            assert point.scores[name] == 100 * want[protocol].map, (method, protocol)
    # the expansions change the ranking of these noisy clusters: the test compares more than plain search
    assert any(not np.array_equal(ranks[m], ranks["plain"]) for m in METHODS)


def test_neardup_protocol_at_a_level_equal_the_functions_by_hand():
    rng = np.random.default_rng(1)
    xdb, _ = clustered(rng, 10, 3, 16, 0.6)
    xq = xdb[::3] + 0.8 * rng.standard_normal((10, 16)).astype(np.float32)  # an edited copy of each cluster's first
    gnd = [{"ok": np.array([3 * i]), "junk": np.array([], np.int64)} for i in range(10)]
    ds = arrays_dataset(("neardup",), gnd, len(xdb))
    grid = stress.run_grid(xdb, xq, eval_run.retrieval_scores(ds, expand=METHODS), ["q2"], levels=[3],
                           progress=False)
    point = grid.points[-1]
    assert (point.experiment, point.levels) == ("q2", 3) and grid.metric_names == ["map", "recall@1"]
    ranks = rankings(*decoded(xdb, xq, 3))
    for method in METHODS:
        m, _, _, _ = metrics.compute_map(ranks[method], gnd)
        r1 = metrics.recall_at_k(ranks[method].T[:, :1], [set(g["ok"]) for g in gnd], 1)
        assert point.scores[f"{method}:map"] == 100 * m
        assert point.scores[f"{method}:recall@1"] == 100 * r1


def test_expanded_rankings_of_the_identity_are_those_of_the_functions():
    rng = np.random.default_rng(2)
    xdb = stress.l2_normalize(rng.standard_normal((30, 8)))
    xq = stress.l2_normalize(rng.standard_normal((5, 8)))
    got = eval_run.expanded_rankings(xdb, xq, METHODS)
    want = rankings(xdb, xq)
    for m in METHODS:
        np.testing.assert_array_equal(got[m], want[m])


def test_eval_ranks_as_retr_query_expand_on_a_small_database():
    """Below DBA's shortlist (100) and the diffusion's truncation (1,000), `retr query --expand`'s re-ranking
    (`expansion.expanded_search` over an exact search) orders the whole database as the eval does."""
    rng = np.random.default_rng(3)
    x, _ = clustered(rng, 8, 7, 12, 0.7)
    xdb, xq = stress.l2_normalize(x[:50]), stress.l2_normalize(x[50:] + 0.3 * rng.standard_normal((6, 12)))

    def search(xs, k):
        s = xs @ xdb.T
        I = np.argsort(-s, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(s, I, 1), I

    got = eval_run.expanded_rankings(xdb, xq, METHODS)
    for m in METHODS:
        _, I = expansion.expanded_search(xq, len(xdb), m, search, lambda ids: xdb[ids])
        np.testing.assert_array_equal(got[m], I.T, err_msg=m)


def fake_features(enc, paths, bboxes=None, *args, **kw):
    """Descriptors without a network: neardup names its database images <i>_<name> and its queries
    <i>_<j>_<edit>; each query is its photo's vector plus noise, so expansions have something to rank."""
    rng = np.random.default_rng(7)
    base = rng.standard_normal((64, 32))
    out = []
    for p in paths:
        i = int(p.name.split("_")[0])
        if p.parent.name == "queries":
            noise = np.random.default_rng(zlib.crc32(p.name.encode())).standard_normal(32)
            out.append(base[i] + 1.5 * noise)
        else:
            out.append(base[i])
    return np.abs(np.array(out, np.float32))  # ReLU-like, as CNN descriptors


@pytest.fixture
def photos(tmp_path):
    rng = np.random.default_rng(6)
    for k in range(6):
        (tmp_path / "photos").mkdir(exist_ok=True)
        family_base(rng, 64).save(tmp_path / "photos" / f"p{k}.jpg", quality=90)
    return tmp_path / "photos"


def test_evaluate_reports_each_method_and_its_gain_per_level(tmp_path, photos, monkeypatch):
    monkeypatch.setattr(eval_run, "compute_features", fake_features)
    out = tmp_path / "rep"
    # a plain run first: its cached points have no expansion scores and must not be reused
    eval_run.evaluate("neardup", photos, out, FAST, ("q2",), device="cpu", levels=(2, 4), progress=False)
    assert not (out / "expansion.csv").exists()
    r = eval_run.evaluate("neardup", photos, out, FAST, ("q2",), device="cpu", levels=(2, 4), progress=False,
                          expand=("dba", "diffusion", "aqe", "aqe"))
    header, *rows = (out / "expansion.csv").read_text().splitlines()
    assert header == ("Experiment,Dimensions,Values,Removed Bits,Bytes per vector,Metric,Plain,AQE,AQE gain,DBA,"
                      "DBA gain,Diffusion,Diffusion gain")
    assert len(rows) == 3 * 2  # identity, q2 at h = 2 and 4; mAP and recall@1
    doc = json.loads((out / "results.json").read_text())
    assert doc["manifest"]["expand"] == ["aqe", "dba", "diffusion"]
    assert doc["result"]["metric_names"] == ["map", "recall@1"] == list(doc["result"]["baseline"])
    for rec in doc["expansion"]:
        point = next(p for p in r.grid.points if (p.experiment, p.levels) == (rec["experiment"], rec["levels"]))
        assert rec["plain"] == point.scores[rec["metric"]]
        for m in METHODS:
            assert rec[m] == point.scores[f"{m}:{rec['metric']}"]
            assert rec[f"{m}_gain"] == pytest.approx(rec[m] - rec["plain"])
    q2h4 = next(rec for rec in doc["expansion"] if rec["levels"] == 4 and rec["metric"] == "map")
    row = next(row.split(",") for row in rows if row.startswith("Q-2,32,4,,8.000000,mAP,"))
    assert float(row[6]) == pytest.approx(q2h4["plain"]) and float(row[8]) == pytest.approx(q2h4["aqe_gain"])
    page = (out / "report.html").read_text()
    assert "<h2>Query expansion per level</h2>" in page and "<th>Diffusion gain</th>" in page
    assert "## Query expansion per level" in (out / "summary.md").read_text()
    assert out / "expansion.png" in r.files["plots"]
    # the grid's other files are those of a plain run
    assert (out / "q-2_alexnet_neardup_map.csv").read_text().splitlines()[0] == \
        "Layer,Values,mAP,Bytes per vector,Compression (%)"


def test_a_classification_dataset_refuses_expand_in_one_line(tmp_path):
    r = run("eval", "synthetic-cls", "--out", tmp_path / "rep", "--backbone", "alexnet", "--weights", "none",
            "--device", "cpu", "--expand", "aqe")
    assert r.exit_code == 1 and "Traceback" not in r.output
    (line,) = r.output.strip().splitlines()
    assert line == ("Error: --expand re-ranks retrieval results; synthetic-cls is a classification dataset (scored "
                    "by linear SVMs): drop --expand")


@pytest.mark.parametrize("args, words", [
    (["--expand", "aqe,qe"], "--expand 'qe': choose among aqe, dba, diffusion"),
    (["--expand", "none"], "(plain search is always scored)"),
    (["--expand", "dba", "--index", "ivf"], "use --index flat, not ivf"),
])
def test_bad_expand_options_are_one_line_before_any_image(tmp_path, args, words):
    r = run("eval", "synthetic", "--out", tmp_path / "rep", *args)
    assert r.exit_code == 1 and "Traceback" not in r.output
    (line,) = r.output.strip().splitlines()
    assert words in line
    assert not (tmp_path / "rep").exists()  # refused before the dataset was generated


def test_check_expand_orders_and_dedups():
    assert eval_run.check_expand(("diffusion", "aqe", "diffusion")) == ("aqe", "diffusion")
    assert eval_run.check_expand(()) == () and eval_run.check_expand((), "hnsw") == ()
    with pytest.raises(ConfigError):
        eval_run.check_expand(("aqe",), "hnsw")
