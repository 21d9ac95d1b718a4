"""Tests of retr.retrieval.codec: hand-computed examples, exact code sizes, property tests against oracles."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from retr.retrieval import codec as C
from retr.retrieval.errors import ConfigError, DatabaseError

PROPS = settings(max_examples=60, deadline=None)


def _data(seed: int, m: int, n: int) -> np.ndarray:
    """Correlated Gaussian data with decreasing variances, (m, n) float32."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((m, n)) @ rng.standard_normal((n, n)) * np.linspace(2.0, 0.1, n)).astype(
        np.float32
    )


def _oracle_bits(idx: np.ndarray, bits: int) -> np.ndarray:
    size = math.ceil(idx.shape[1] * bits / 8)
    rows = [sum(int(v) << (j * bits) for j, v in enumerate(row)).to_bytes(size, "little") for row in idx]
    return np.frombuffer(b"".join(rows), np.uint8).reshape(len(idx), size)


def _oracle_radix(idx: np.ndarray, h: int) -> np.ndarray:
    size = ((h ** idx.shape[1] - 1).bit_length() + 7) // 8
    rows = [sum(int(v) * h**j for j, v in enumerate(row)).to_bytes(size, "little") for row in idx]
    return np.frombuffer(b"".join(rows), np.uint8).reshape(len(idx), size)


def _one_dim(values, **kw) -> C.CodecParams:
    return C.fit(np.array(values, np.float32)[:, None], C.CodecConfig(reduction="none", **kw))


# ---------------------------------------------------------------- hand-computed examples


def test_quantize_by_hand_1d():
    params = _one_dim([0, 1, 2, 4], levels=4)  # lo 0, hi 4, st 1
    assert params.lo.tolist() == [0.0] and params.hi.tolist() == [4.0]
    assert C.levels(params).tolist() == [[0.5, 1.5, 2.5, 3.5]]
    x = np.array([[3.9], [-5], [10], [1.0], [0.99], [0], [4]], np.float32)
    idx = C.quantize(params, x)
    assert idx.dtype == np.uint8 and idx[:, 0].tolist() == [3, 0, 3, 1, 0, 0, 3]  # boundary 1.0 -> upper cell
    assert C.decode(params, C.encode(params, x))[:, 0].tolist() == [3.5, 0.5, 3.5, 1.5, 0.5, 0.5, 3.5]


def test_quantize_and_dequantize_in_blocks_equal_the_whole_array_formula():
    """They work a cache-sized block of rows at a time (1000 x 600: 3 blocks); the result is bit-identical to the
    whole-array definition, a constant dimension and values outside the range included."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1000, 600)).astype(np.float32)
    x[:, 7] = 1.5
    params = C.fit(x[:800], C.CodecConfig(reduction="none", quantizer="q2", levels=5))
    lo = params.lo.astype(np.float64)
    st = (params.hi.astype(np.float64) - lo) / 5
    with np.errstate(divide="ignore", invalid="ignore"):
        want = np.clip(np.where(st > 0, np.floor((x.astype(np.float64) - lo) / st), 0), 0, 4).astype(np.uint8)
    idx = C.quantize(params, x)
    assert np.array_equal(idx, want) and idx[:, 7].max() == 0 and len(C._row_chunks(x.shape)) == 3
    assert np.array_equal(C.dequantize(params, idx), (lo + st * (want + 0.5)).astype(np.float32))


def test_constant_dimension_maps_to_lo():
    params = _one_dim([2.5, 2.5, 2.5], levels=4)
    assert C.quantize(params, np.array([[2.5], [-1.0], [9.0]], np.float32))[:, 0].tolist() == [0, 0, 0]
    assert C.levels(params).tolist() == [[2.5] * 4]


def test_one_level_costs_nothing():
    params = _one_dim([0, 1, 2, 4], levels=1)
    assert params.code_size == 0 and params.bits_per_dim == 0.0
    codes = C.encode(params, np.array([[3.0], [-7.0]], np.float32))
    assert codes.shape == (2, 0)
    assert C.decode(params, codes)[:, 0].tolist() == [2.0, 2.0]  # the midpoint of [0, 4]


def test_pack_bits_by_hand():
    assert C.pack_bits(np.array([[1, 2, 3, 0]]), 2).tolist() == [[0x39]]
    # 3 bits across a byte boundary: 5 + (3 << 3) + (7 << 6) = 477 = 0x01DD
    assert C.pack_bits(np.array([[5, 3, 7]]), 3).tolist() == [[0xDD, 0x01]]
    assert C.unpack_bits(np.array([[0xDD, 0x01]], np.uint8), 3, 3).tolist() == [[5, 3, 7]]


def test_pack_radix_by_hand():
    # 2 + 1*3 + 0*9 + 2*27 = 59; 3**4 - 1 = 80 fits one byte
    assert C.pack_radix(np.array([[2, 1, 0, 2]]), 3).tolist() == [[59]]
    assert C.unpack_radix(np.array([[59]], np.uint8), 4, 3).tolist() == [[2, 1, 0, 2]]


@pytest.mark.parametrize(
    "n, p, h, quantizer, packing, size, bits",
    [
        (64, 64, 4, "q2", "bits", 16, 2.0),
        (512, 256, 4, "q2", "bits", 64, 2.0),
        (64, 64, 3, "q2", "radix", 13, math.log2(3)),
        (64, 64, 3, "q2", "bits", 16, 2.0),
        (64, 64, 1, "q1", "bits", 0, 0.0),
        (64, 64, 2, "q1", "bits", 8, 1.0),
        (64, 64, 5, "q2", "bits", 24, 3.0),
        (64, 64, 300, "q2", "bits", 72, 9.0),
        (64, 32, 4, "none", "bits", 128, 32.0),
    ],
)
def test_code_size_exact(n, p, h, quantizer, packing, size, bits):
    cfg = C.CodecConfig(dims=p, levels=h, quantizer=quantizer, packing=packing)
    params = C.fit(_data(0, 300, n), cfg)
    assert params.dims == p and params.code_size == size and params.bits_per_dim == pytest.approx(bits)
    assert params.compression == pytest.approx(1 - size / (4 * n))
    assert C.encode(params, _data(1, 3, n)).shape == (3, size)


def test_compression_of_the_default_codec():
    params = C.fit(np.random.default_rng(0).standard_normal((300, 2048), np.float32), C.CodecConfig())
    assert params.code_size == 64 and params.compression == 1 - 64 / 8192


def test_index_dtype_follows_levels():
    x = _data(0, 50, 8)
    assert C.quantize(C.fit(x, C.CodecConfig(dims=4, levels=256)), np.zeros((1, 4))).dtype == np.uint8
    params = C.fit(x, C.CodecConfig(dims=4, levels=300))
    assert C.quantize(params, np.zeros((1, 4))).dtype == np.uint16 and C.levels(params).shape == (4, 300)


# ---------------------------------------------------------------- reduction


def test_dr1_keeps_a_seeded_subset():
    x = _data(0, 20, 50)
    a = C.fit(x, C.CodecConfig(reduction="dr1", dims=12, seed=3))
    assert a.selected.dtype == np.int64 and len(set(a.selected.tolist())) == 12
    assert (
        a.selected.tolist() == sorted(a.selected.tolist()) and a.selected.min() >= 0 and a.selected.max() < 50
    )
    assert C.fit(x, C.CodecConfig(reduction="dr1", dims=12, seed=3)).selected.tolist() == a.selected.tolist()
    assert C.fit(x, C.CodecConfig(reduction="dr1", dims=12, seed=4)).selected.tolist() != a.selected.tolist()
    assert np.array_equal(C.reduce(a, x), x[:, a.selected])
    assert a.mean is None and a.components is None and not a.capped  # dr1 needs no training vectors per dim


@pytest.mark.parametrize("m", [16, 300])  # fewer and more vectors than dims: SVD and covariance paths
def test_pca_axes(m):
    x = _data(1, m, 24)
    params = C.fit(x, C.CodecConfig(dims=10))
    comps, var = params.components.astype(np.float64), params.explained_variance
    assert comps.shape == (10, 24) and np.allclose(comps @ comps.T, np.eye(10), atol=1e-5)
    assert np.all(np.diff(var) <= 0)
    assert np.all(comps[np.arange(10), np.abs(comps).argmax(axis=1)] > 0)  # deterministic sign
    # oracle: SVD of the centred data
    xc = x.astype(np.float64) - x.mean(axis=0, dtype=np.float64)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    assert np.allclose(var, s[:10] ** 2 / m, rtol=1e-4)
    assert np.allclose(np.abs(comps @ vt[:10].T), np.eye(10), atol=1e-4)
    y = C.reduce(params, x)
    assert np.allclose(y.mean(axis=0), 0, atol=1e-4) and np.allclose(y.var(axis=0), var, rtol=1e-3)


def test_pca_whitening_gives_unit_variance():
    x = _data(2, 200, 16)
    y = C.reduce(C.fit(x, C.CodecConfig(dims=8, whiten=True)), x)
    assert np.allclose(y.var(axis=0), 1.0, rtol=1e-3)
    # 5 centred vectors span 4 axes: the 5th has no variance and is left unscaled, not blown up
    capped = C.fit(x[:5], C.CodecConfig(dims=8, whiten=True))
    y = C.reduce(capped, x)
    assert capped.dims == 5 and np.isfinite(y).all()
    assert np.allclose(C.reduce(capped, x[:5]).var(axis=0), [1, 1, 1, 1, 0], atol=1e-3)


def test_dims_capped_by_training_vectors():
    params = C.fit(_data(0, 10, 40), C.CodecConfig(dims=32))
    assert (params.dims, params.requested_dims, params.capped, params.n_train) == (10, 32, True, 10)
    assert params.components.shape == (10, 40) and params.code_size == 3
    full = C.fit(_data(0, 70, 128), C.CodecConfig(dims=64))  # 70 images, 64 dims: no cap
    assert (full.dims, full.capped) == (64, False)
    wide = C.fit(_data(0, 70, 16), C.CodecConfig(dims=64))  # more dims requested than the input has
    assert (wide.dims, wide.requested_dims, wide.capped) == (16, 64, True)


def test_keep_fraction():
    x = _data(0, 120, 100)
    assert C.fit(x, C.CodecConfig(dims=None, keep=0.29)).dims == 29  # not 28 (0.29 * 100 = 28.999...)
    assert C.fit(x, C.CodecConfig(reduction="dr1", dims=None, keep=0.05)).dims == 5
    assert C.fit(x, C.CodecConfig(dims=None)).dims == 100
    assert C.fit(x, C.CodecConfig(reduction="none")).dims == 100


# ---------------------------------------------------------------- quantizer ranges


def test_q1_uses_one_global_range():
    x = np.array([[0, 10], [1, 30], [2, 20]], np.float32)
    q1 = C.fit(x, C.CodecConfig(reduction="none", quantizer="q1"))
    assert q1.lo.tolist() == [0, 0] and q1.hi.tolist() == [30, 30]
    q2 = C.fit(x, C.CodecConfig(reduction="none", quantizer="q2"))
    assert q2.lo.tolist() == [0, 10] and q2.hi.tolist() == [2, 30]


def test_quantile_and_sigma_ranges():
    x = np.stack([np.arange(101), 2 * np.arange(101)], axis=1).astype(np.float32)
    q2 = C.fit(x, C.CodecConfig(reduction="none", range="quantile:0.1"))
    assert np.allclose(q2.lo, [10, 20]) and np.allclose(q2.hi, [90, 180])
    q1 = C.fit(x, C.CodecConfig(reduction="none", quantizer="q1", range="quantile:0.25"))
    assert np.allclose(q1.lo, np.quantile(x, 0.25)) and np.allclose(q1.hi, np.quantile(x, 0.75))
    y = np.array([[1, 0], [3, 0], [1, 4], [3, 4]], np.float32)  # means 2, 2; stds 1, 2
    s2 = C.fit(y, C.CodecConfig(reduction="none", range="sigma:0.5"))
    assert s2.lo.tolist() == [1.5, 1] and s2.hi.tolist() == [2.5, 3]
    s1 = C.fit(y, C.CodecConfig(reduction="none", quantizer="q1", range="sigma:0.5"))
    sd = math.sqrt(2.5)  # all 8 values: mean 2, variance (4 * 1 + 4 * 4) / 8
    assert np.allclose(s1.lo, 2 - 0.5 * sd) and np.allclose(s1.hi, 2 + 0.5 * sd)
    # mean +- 2 sd reaches beyond the data ([0, 4] and [-2, 6] per dimension, 2 -+ 3.16 for q1): clamped to
    # [min, max], which is then the minmax range
    s2 = C.fit(y, C.CodecConfig(reduction="none", range="sigma:2"))
    assert s2.lo.tolist() == [1, 0] and s2.hi.tolist() == [3, 4]
    s1 = C.fit(y, C.CodecConfig(reduction="none", quantizer="q1", range="sigma:2"))
    assert s1.lo.tolist() == [0, 0] and s1.hi.tolist() == [4, 4]


def test_sigma_range_of_relu_features_uses_every_level():
    """ReLU-like values (most 0, a few large): mean - 3 sd lies below every value; clamped to the minimum 0, the 4
    levels all lie within the data and each is used."""
    v = np.array([0.0] * 8 + [1.0, 5.0], np.float32)  # mean 0.6, sd 1.4967
    p = _one_dim(v, range="sigma:3", levels=4)
    # unclamped: [-3.89, 5.09], levels -2.77, -0.52, 1.72, 3.97: the lowest below every value, so 3 usable levels
    assert p.lo.tolist() == [0.0] and p.hi.tolist() == [5.0]
    np.testing.assert_allclose(C.levels(p), [[0.625, 1.875, 3.125, 4.375]])
    assert C.quantize(p, np.array([[0.0], [1.5], [3.0], [5.0]], np.float32)).ravel().tolist() == [0, 1, 2, 3]


# A codec fitted by retr before robust ranges were clamped (sigma:2 on the 4 x 2 example above: lo [0, -2], hi [4, 6],
# beyond the data); its stored range must keep decoding as it did.
OLD_SIGMA_BLOB = (
    b'RETRCODCX\x01\x00\x00{"arrays":{"hi":{"dtype":"<f4","nbytes":8,"offset":8,"shape":[2]},"lo":{"dtype":"<f4",'
    b'"nbytes":8,"offset":0,"shape":[2]}},"capped":false,"config":{"dims":null,"keep":null,"levels":4,"packing":'
    b'"bits","quantizer":"q2","range":"sigma:2","reduction":"none","seed":0,"whiten":false},"dims":2,"input_dim":2,'
    b'"n_train":4,"requested_dims":2,"version":1}\x00\x00\x00\x00\x00\x00\x00\xc0\x00\x00\x80@\x00\x00\xc0@'
)


def test_a_sigma_codec_stored_before_the_clamp_decodes_as_before():
    old = C.CodecParams.from_bytes(OLD_SIGMA_BLOB)
    assert old.lo.tolist() == [0, -2] and old.hi.tolist() == [4, 6]
    assert old.to_bytes() == OLD_SIGMA_BLOB  # re-serialised byte for byte: same fingerprint
    y = np.array([[1, 0], [3, 0], [1, 4], [3, 4]], np.float32)
    codes = C.encode(old, y)
    # steps 1 and 2: levels 0.5, 1.5, 2.5, 3.5 and -1, 1, 3, 5; 1 -> level 1, 3 -> 3; 0 -> 1 (boundary up), 4 -> 3
    assert codes.ravel().tolist() == [1 | 1 << 2, 3 | 1 << 2, 1 | 3 << 2, 3 | 3 << 2]
    np.testing.assert_array_equal(C.decode(old, codes), [[1.5, 1], [3.5, 1], [1.5, 5], [3.5, 5]])
    # refitted today, the same configuration clamps to the data: another codec, another fingerprint
    assert C.fit(y, old.config).fingerprint() != old.fingerprint()


# ---------------------------------------------------------------- configuration


def test_config_round_trip_and_names():
    cfg = C.CodecConfig(reduction="dr1", dims=128, seed=3, quantizer="q1", levels=8, range="sigma:3")
    assert C.CodecConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.short_name() == "dr1_128s3-q1h8-sigma3"
    assert C.CodecConfig().short_name() == "pca256-q2h4"
    assert (
        C.CodecConfig(dims=None, keep=0.5, whiten=True, packing="radix", levels=3).short_name()
        == "pcak0.5w-q2h3-radix"
    )
    assert C.CodecConfig(reduction="none", quantizer="none").short_name() == "full-f32"
    assert C.CodecConfig(reduction="none").dims is None


@pytest.mark.parametrize(
    "kw",
    [
        {"reduction": "svd"},
        {"quantizer": "q3"},
        {"packing": "zip"},
        {"levels": 0},
        {"levels": 1.5},
        {"levels": 70000},
        {"dims": 0},
        {"dims": "256"},
        {"keep": 0.0},
        {"keep": 1.5},
        {"keep": 0.5},
        {"dims": None, "keep": True},
        {"range": "minmax:1"},
        {"range": "quantile"},
        {"range": "quantile:0.5"},
        {"range": "sigma:-1"},
        {"range": "sigma:x"},
        {"range": "iqr"},
        {"whiten": True, "reduction": "dr1"},
        {"whiten": 1},
        {"seed": -1},
    ],
)
def test_config_rejects_bad_values(kw):
    with pytest.raises(ConfigError) as e:
        C.CodecConfig(**kw)
    assert "\n" not in str(e.value)


def test_config_from_dict_rejects_unknown_keys():
    with pytest.raises(ConfigError, match="unknown codec option.*levles"):
        C.CodecConfig.from_dict({"levles": 4})


# ---------------------------------------------------------------- persistence


def test_save_load_identical(tmp_path):
    x = _data(5, 80, 32)
    for cfg in [
        C.CodecConfig(dims=16, whiten=True),
        C.CodecConfig(reduction="dr1", dims=8, quantizer="q1"),
        C.CodecConfig(reduction="none", quantizer="none"),
        C.CodecConfig(levels=3, packing="radix"),
    ]:
        params = C.fit(x, cfg)
        for other in [
            C.CodecParams.from_bytes(params.to_bytes()),
            C.CodecParams.load(params.save(tmp_path / "codec.bin")),
        ]:
            assert other.fingerprint() == params.fingerprint() and other.config == cfg
            assert np.array_equal(C.encode(other, x), C.encode(params, x))
            assert (other.dims, other.capped, other.n_train) == (params.dims, params.capped, params.n_train)
    assert [p.name for p in tmp_path.iterdir()] == ["codec.bin"]  # no temp file left behind


def test_fingerprint_depends_on_content():
    x = _data(5, 80, 32)
    assert C.fit(x, C.CodecConfig(dims=8)).fingerprint() == C.fit(x, C.CodecConfig(dims=8)).fingerprint()
    assert C.fit(x, C.CodecConfig(dims=8)).fingerprint() != C.fit(x[:-1], C.CodecConfig(dims=8)).fingerprint()


def test_from_bytes_rejects_newer_and_corrupt(tmp_path):
    blob = C.fit(_data(0, 30, 8), C.CodecConfig(dims=4)).to_bytes()
    newer = blob.replace(b'"version":1', b'"version":%d' % (C.CODEC_VERSION + 1))
    with pytest.raises(DatabaseError, match="newer"):
        C.CodecParams.from_bytes(newer)
    for bad in [b"", b"garbage", blob[:-4], b"X" + blob[1:]]:
        with pytest.raises(DatabaseError, match="corrupt"):
            C.CodecParams.from_bytes(bad)
    with pytest.raises(DatabaseError, match="does not exist"):
        C.CodecParams.load(tmp_path / "missing.bin")


def test_fit_rejects_empty_training_set():
    with pytest.raises(ConfigError, match="at least one"):
        C.fit(np.zeros((0, 8), np.float32), C.CodecConfig())


# ---------------------------------------------------------------- properties


@PROPS
@given(bits=st.integers(0, 16), m=st.integers(0, 4), p=st.integers(1, 40), seed=st.integers(0, 2**32 - 1))
def test_pack_bits_matches_big_int_oracle(bits, m, p, seed):
    idx = np.random.default_rng(seed).integers(0, 1 << bits, (m, p))
    codes = C.pack_bits(idx, bits)
    assert codes.dtype == np.uint8 and np.array_equal(codes, _oracle_bits(idx, bits))
    assert np.array_equal(C.unpack_bits(codes, p, bits), idx)


@pytest.mark.parametrize("bits", range(17))
def test_pack_bits_every_width_extremes(bits):
    idx = np.array([[0] * 9, [(1 << bits) - 1] * 9, [(1 << bits) - 1, 0] * 4 + [1 % (1 << bits)]])
    assert np.array_equal(C.pack_bits(idx, bits), _oracle_bits(idx, bits))
    assert np.array_equal(C.unpack_bits(C.pack_bits(idx, bits), 9, bits), idx)


@PROPS
@given(h=st.integers(1, 300), m=st.integers(0, 4), p=st.integers(1, 80), seed=st.integers(0, 2**32 - 1))
def test_pack_radix_matches_big_int_oracle(h, m, p, seed):
    idx = np.random.default_rng(seed).integers(0, h, (m, p))
    idx[:1] = h - 1  # the largest code
    codes = C.pack_radix(idx, h)
    assert np.array_equal(codes, _oracle_radix(idx, h))
    assert np.array_equal(C.unpack_radix(codes, p, h), idx)


@pytest.mark.parametrize("b", range(1, 17))
def test_radix_of_power_of_two_equals_bits(b):
    idx = np.random.default_rng(b).integers(0, 1 << b, (5, 37))
    assert np.array_equal(C.pack_radix(idx, 1 << b), C.pack_bits(idx, b))


def test_unpack_radix_rejects_out_of_range_code():
    with pytest.raises(ValueError, match="corrupt"):
        C.unpack_radix(np.array([[81]], np.uint8), 4, 3)  # 81 = 3**4


CODEC_CONFIGS = st.builds(
    C.CodecConfig,
    reduction=st.sampled_from(["none", "dr1", "pca"]),
    dims=st.just(6),
    quantizer=st.sampled_from(["q1", "q2"]),
    levels=st.sampled_from([1, 2, 3, 4, 7, 16, 30]),
    range=st.sampled_from(["minmax", "quantile:0.05", "sigma:2"]),
    packing=st.sampled_from(["bits", "radix"]),
)


@PROPS
@given(cfg=CODEC_CONFIGS, seed=st.integers(0, 2**32 - 1))
def test_decode_then_encode_reproduces_codes(cfg, seed):
    x = _data(seed, 40, 10)
    params = C.fit(x, cfg)
    codes = C.encode(params, x)
    assert codes.shape == (40, params.code_size)
    assert np.array_equal(C.encode_reduced(params, C.decode(params, codes)), codes)
    if cfg.reduction == "none":
        assert np.array_equal(C.encode(params, C.decode(params, codes)), codes)
    # every code, not only those of the data: random level indices
    idx = np.random.default_rng(seed).integers(0, cfg.levels, (20, params.dims))
    y = C.dequantize(params, idx)
    assert np.array_equal(C.quantize(params, y), idx)
    assert np.array_equal(y, np.take_along_axis(C.levels(params), idx.T, axis=1).T)  # table == dequantize


@PROPS
@given(cfg=CODEC_CONFIGS, seed=st.integers(0, 2**32 - 1))
def test_error_never_grows_on_nested_grids(cfg, seed):
    # The level centres of h are a subset of those of 3h (level i of h is level 3i+1 of 3h) and quantization
    # picks the nearest level, so no value's error can grow from h to 3h. From h to 2h it can (next test).
    x = _data(seed, 40, 10)
    coarse = C.fit(x, cfg)
    fine = C.fit(x, C.CodecConfig.from_dict({**cfg.to_dict(), "levels": 3 * cfg.levels}))
    xt = np.concatenate([x, _data(seed + 1, 10, 10) * 3])  # also values outside the training range
    y = C.reduce(coarse, xt)
    err_coarse = np.abs(C.decode(coarse, C.encode(coarse, xt)) - y)
    err_fine = np.abs(C.decode(fine, C.encode(fine, xt)) - y)
    assert np.all(err_fine <= err_coarse + 1e-5 * (1 + np.abs(y)))
    if cfg.range == "minmax":  # within [lo, hi] the error is at most half a step
        y_train = C.reduce(coarse, x)
        err = np.abs(C.decode(coarse, C.encode(coarse, x)) - y_train)
        assert np.all(err <= (coarse.hi - coarse.lo) / (2 * cfg.levels) * (1 + 1e-5) + 1e-6)


def test_doubling_levels_can_increase_error():
    # 0, eight 0.5s, 1: h=1 has the level 0.5 (MSE 2 * 0.25 / 10 = 1/20); h=2 has 0.25 and 0.75, every value
    # is 0.25 away (MSE 1/16). The grids are not nested; on Gaussian data h=1 -> 2 increases the MSE too.
    x = np.array([[0.0]] + [[0.5]] * 8 + [[1.0]], np.float32)
    mse = [
        np.mean((C.decode(p, C.encode(p, x)) - x) ** 2) for p in (_one_dim(x[:, 0], levels=h) for h in (1, 2))
    ]
    assert mse == pytest.approx([1 / 20, 1 / 16])


def test_quantizer_none_stores_float32():
    x = _data(0, 30, 12)
    params = C.fit(x, C.CodecConfig(dims=5, quantizer="none"))
    codes = C.encode(params, x)
    assert codes.shape == (30, 20) and params.bits_per_dim == 32.0
    # The codes are the float32 values themselves, bit for bit ...
    assert np.array_equal(C.decode(params, codes), codes.view("<f4"))
    # ... of the reduction. That is a float32 matrix product, which BLAS builds compute with shape-dependent
    # kernels (1 row vs 30 rows differ in the last bits), so compare with a float32 tolerance.
    y = C.reduce(params, x)
    tol = dict(rtol=1e-5, atol=1e-5 * float(np.abs(y).max()))
    np.testing.assert_allclose(codes[0, :4].view("<f4"), C.reduce(params, x[:1])[0, :1], **tol)
    np.testing.assert_allclose(C.decode(params, codes), y, **tol)
    with pytest.raises(ValueError, match="does not quantize"):
        C.levels(params)


def test_wrong_shapes_are_bugs():
    params = C.fit(_data(0, 30, 12), C.CodecConfig(dims=5))
    with pytest.raises(ValueError, match="12 columns"):
        C.encode(params, np.zeros((2, 11), np.float32))
    with pytest.raises(ValueError, match="2 columns"):
        C.decode(params, np.zeros((2, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        C.pack_bits(np.array([[4]]), 2)


# ---------------------------------------------------------------- beyond the paper: bit allocation, Lloyd-Max levels


def test_allocate_bits_by_hand():
    # variances 16, 4, 1: gains log2(var) - 2k = 4, 2, 0, -2 ... | 2, 0, -2 ... | 0, -2 ...; the 8 largest (ties:
    # lower dimension first) are 4, 2 (dim 0), 2 (dim 1), 0, 0, 0 (dims 0, 1, 2), -2 (dim 0), -2 (dim 1)
    assert C.allocate_bits([16, 4, 1], 8).tolist() == [4, 3, 1]
    assert C.allocate_bits([16, 4, 1], 3).tolist() == [2, 1, 0]
    assert C.allocate_bits([1, 1, 1], 4).tolist() == [2, 1, 1]  # equal variances: the lower dimensions first
    # a dimension without variance gets bits only when every other one is full; at most max_bits each
    assert C.allocate_bits([0, 5], 9, max_bits=8).tolist() == [1, 8]
    assert C.allocate_bits([3, 2], 100, max_bits=8).tolist() == [8, 8]


def test_pack_varbits_by_hand_and_against_the_oracle():
    # widths 2, 0, 3, 1: [3, 0, 5, 1] -> 3 | 5 << 2 | 1 << 5 = 0b110111 = 0x37, one byte
    idx = np.array([[3, 0, 5, 1]])
    assert C.pack_varbits(idx, np.array([2, 0, 3, 1])).tolist() == [[0x37]]
    assert C.unpack_varbits(np.array([[0x37]], np.uint8), np.array([2, 0, 3, 1])).tolist() == [[3, 0, 5, 1]]
    rng = np.random.default_rng(0)
    for _ in range(20):
        bits = rng.integers(0, 17, rng.integers(1, 12))
        idx = rng.integers(0, 1 << bits, (5, len(bits)))
        oracle = [sum(int(v) << int(o) for v, o in zip(row, np.cumsum(bits) - bits)).to_bytes(
            -(-int(bits.sum()) // 8), "little") for row in idx]
        codes = C.pack_varbits(idx, bits)
        assert codes.tobytes() == b"".join(oracle)
        assert np.array_equal(C.unpack_varbits(codes, bits), idx)
    idx = rng.integers(0, 8, (4, 6))  # one width for all: pack_bits' layout
    assert np.array_equal(C.pack_varbits(idx, np.full(6, 3)), C.pack_bits(idx, 3))
    with pytest.raises(ValueError, match="2\\*\\*bits"):
        C.pack_varbits(np.array([[4]]), np.array([2]))


def test_lloyd_levels_by_hand():
    # 0, 0, 0, 1, 9, 10: 2 levels start at the 25% and 75% quantiles (0 and 7.75), boundary 3.875: cells {0, 0, 0, 1}
    # and {9, 10}, means 0.25 and 9.5; boundary 4.875 keeps the cells: converged
    np.testing.assert_allclose(C.lloyd_levels(np.array([0, 0, 0, 1, 9, 10.0]), 2), [0.25, 9.5])
    # a value on a boundary goes to the upper cell: 0, 2, 4 start at 1 and 3, boundary 2: cells {0} and {2, 4}, levels
    # 0 and 3 (2 going down would give {0, 2} and {4}: 1 and 4)
    np.testing.assert_allclose(C.lloyd_levels(np.array([0, 2, 4.0]), 2), [0.0, 3.0])
    np.testing.assert_allclose(C.lloyd_levels(np.array([5.0, 5.0]), 3), [5, 5, 5])  # fewer values than levels


def test_lloyd_codec_by_hand():
    v = np.array([0, 0, 0, 1, 9, 10], np.float32)
    p = _one_dim(v, levels=2, levels_kind="lloyd")
    np.testing.assert_allclose(C.levels(p), [[0.25, 9.5]])  # the uniform levels would be 2.5 and 7.5
    assert C.quantize(p, np.array([[4.8], [4.875], [-3.0], [30.0]], np.float32)).ravel().tolist() == [0, 1, 0, 1]
    np.testing.assert_allclose(C.decode(p, C.encode(p, v[:, None])).ravel(), [0.25] * 4 + [9.5] * 2)
    assert p.code_size == 1 and p.version == 2 and p.config.short_name() == "full-q2h2-lloyd"


def test_variance_allocation_codec_by_hand():
    """Dims of standard deviations 4, 2, 1 (variances 16, 4, 1) with a 1-byte budget: 4, 3 and 1 bits (above), so
    16, 8 and 2 uniform levels over each dimension's [min, max]."""
    x = np.array([[-4, -2, -1], [4, 2, 1]] * 5, np.float32)
    p = C.fit(x, C.CodecConfig(reduction="none", allocation="variance", budget=1))
    assert p.bits.tolist() == [4, 3, 1] and p.code_size == 1 and p.levels_per_dim().tolist() == [16, 8, 2]
    # levels lo + st (i + 1/2), st = 8 / 16, 4 / 8, 2 / 2: the first dimension's levels -3.75 ... 3.75
    y = np.array([[0.1, 0.1, 0.1], [-4, 2, -1]], np.float32)
    idx = C.quantize(p, y)
    assert idx.tolist() == [[8, 4, 1], [0, 7, 0]]
    np.testing.assert_allclose(C.dequantize(p, idx), [[0.25, 0.25, 0.5], [-3.75, 1.75, -0.5]])
    assert C.encode(p, y).tolist() == [[8 | 4 << 4 | 1 << 7], [0 | 7 << 4 | 0 << 7]]
    with pytest.raises(ConfigError, match="fast-scan"):
        C.levels(p)
    assert C.fit(x, C.CodecConfig(reduction="none", allocation="variance", budget=9)).code_size == 3  # 3 x 8 bits


@pytest.mark.parametrize("kw", [
    {"allocation": "greedy"}, {"levels_kind": "kmeans"}, {"allocation": "variance"},
    {"allocation": "variance", "budget": 0}, {"allocation": "variance", "budget": 4, "quantizer": "q1"},
    {"allocation": "variance", "budget": 4, "packing": "radix"}, {"budget": 4}, {"levels_kind": "lloyd", "range":
    "sigma:3"}, {"levels_kind": "lloyd", "quantizer": "q1"}, {"levels_kind": "lloyd", "levels": 300},
])  # fmt: skip
def test_config_rejects_bad_options_beyond_the_paper(kw):
    with pytest.raises(ConfigError) as e:
        C.CodecConfig(**kw)
    assert "\n" not in str(e.value)


def test_beyond_the_paper_is_version_2_and_the_paper_stays_version_1(tmp_path):
    x = _data(3, 60, 16)
    paper = C.fit(x, C.CodecConfig(dims=8))
    assert paper.version == 1 and b'"version":1' in paper.to_bytes() and b"allocation" not in paper.to_bytes()
    for cfg in [C.CodecConfig(dims=8, allocation="variance", budget=3),
                C.CodecConfig(dims=8, levels_kind="lloyd", levels=8),
                C.CodecConfig(dims=8, allocation="variance", budget=5, levels_kind="lloyd")]:
        params = C.fit(x, cfg)
        blob = params.to_bytes()
        assert params.version == 2 and b'"version":2' in blob
        back = C.CodecParams.load(params.save(tmp_path / "c.bin"))
        assert back.fingerprint() == params.fingerprint() and back.config == cfg
        assert np.array_equal(C.encode(back, x), C.encode(params, x))
        # a version 1 header cannot hold these options: refused as corrupt, not misread
        with pytest.raises(DatabaseError, match="corrupt"):
            C.CodecParams.from_bytes(blob.replace(b'"version":2', b'"version":1'))
    assert C.CodecConfig.from_dict(C.CodecConfig().to_dict()) == C.CodecConfig()
    assert C.CodecConfig(dims=64, allocation="variance", budget=16).short_name() == "pca64-q2v16B"


@PROPS
@given(allocation=st.sampled_from(["uniform", "variance"]), kind=st.sampled_from(["uniform", "lloyd"]),
       budget=st.integers(1, 6), levels=st.sampled_from([2, 3, 4, 16]), seed=st.integers(0, 2**32 - 1))
def test_beyond_the_paper_decode_then_encode_reproduces_values(allocation, kind, budget, levels, seed):
    if allocation == "uniform" and kind == "uniform":
        return  # the paper's codec: test_decode_then_encode_reproduces_codes
    cfg = C.CodecConfig(dims=6, allocation=allocation, budget=budget if allocation == "variance" else None,
                        levels=levels, levels_kind=kind)
    x = _data(seed, 40, 10)
    params = C.fit(x, cfg)
    codes = C.encode(params, x)
    assert codes.shape == (40, params.code_size) and params.code_size == (budget if allocation == "variance" else
                                                                          -(-6 * (levels - 1).bit_length() // 8))
    y = C.decode(params, codes)
    # levels of a dimension may coincide (Lloyd on few distinct values): the values, not the codes, come back
    np.testing.assert_array_equal(C.decode(params, C.encode_reduced(params, y)), y)
    if params.bits is not None:
        assert params.bits.sum() == 8 * budget and params.bits.max() <= C.MAX_ALLOC_BITS
    if kind == "lloyd" and allocation == "uniform":
        assert np.array_equal(y, np.take_along_axis(C.levels(params), C.indices(params, codes).T, axis=1).T)


def test_lloyd_and_allocation_lower_the_error_at_equal_bytes():
    """On Gaussian PCA components of decreasing variance, at 4 bytes for 16 dimensions: Lloyd-Max levels (MSE-optimal
    for each dimension) and bits moved to the high-variance dimensions both reconstruct better than Q-2 at h = 4."""
    x = (np.random.default_rng(1).standard_normal((2000, 16)) * np.geomspace(4, 0.05, 16)).astype(np.float32)
    mse = {}
    for name, kw in {"q2": {}, "lloyd": {"levels_kind": "lloyd"}, "alloc": {"allocation": "variance", "budget": 4},
                     "both": {"allocation": "variance", "budget": 4, "levels_kind": "lloyd"}}.items():
        p = C.fit(x, C.CodecConfig(dims=16, levels=4, **kw))
        assert p.code_size == 4
        mse[name] = float(np.mean((C.decode(p, C.encode(p, x)) - C.reduce(p, x)) ** 2))
    assert mse["both"] < mse["alloc"] < mse["q2"] and mse["lloyd"] < mse["q2"]


@pytest.mark.parametrize("h", [2, 3, 4, 16])
def test_lloyd_levels_go_through_the_fast_scan_mapping_losslessly(h):
    """Lloyd-Max levels with one h in every dimension are a levels table like the paper's: the fast-scan index reads
    back exactly the codec's decoding, and its re-ranked search is exact search on it."""
    from retr.indexes import IndexConfig, build_fastscan, search

    rng = np.random.default_rng(h)
    x = (rng.standard_normal((800, 9)) * np.linspace(1.0, 0.2, 9)).astype(np.float32)
    params = C.fit(x, C.CodecConfig(reduction="none", levels=h, levels_kind="lloyd"))
    codes = C.encode(params, x)
    y = C.decode(params, codes)
    index = build_fastscan(C.levels(params), C.indices(params, codes), np.arange(800),
                           IndexConfig("fastscan", rerank=800))
    assert np.abs(index.reconstruct(np.arange(800)) - y).max() == 0.0
    yn = y / np.linalg.norm(y, axis=1, keepdims=True)
    q = rng.standard_normal((10, 9)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    D, _ = search(index, q, 5)
    np.testing.assert_allclose(D, -np.sort(-(q @ yn.T), axis=1)[:, :5], atol=1e-6)
