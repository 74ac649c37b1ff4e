"""N-TIDE figures: the PCA map equals scikit-learn's PCA (up to the sign of each axis), t-SNE is seeded, one trace
per group and panel with the same subsample in every panel, training curves per model; bad inputs are named."""
import numpy as np
import pytest

from workbench.viz.ntide import feature_map, plot_feature_maps, plot_training_curves


def _features(n=60, d=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) * np.arange(1, d + 1)


def test_pca_map_matches_sklearn_up_to_sign():
    from sklearn.decomposition import PCA

    x = _features()
    ours = feature_map(x, "pca")
    ref = PCA(n_components=2).fit_transform(x)
    for k in range(2):
        sign = np.sign(ours[:, k] @ ref[:, k])
        np.testing.assert_allclose(ours[:, k], sign * ref[:, k], atol=1e-9)


def test_tsne_is_seeded():
    x = _features(n=40)
    a, b = feature_map(x, "tsne", seed=1), feature_map(x, "tsne", seed=1)
    assert a.shape == (40, 2) and np.array_equal(a, b)


def test_feature_maps_one_trace_per_group_and_panel():
    groups = np.arange(50) % 2
    fig = plot_feature_maps({"student": _features(50), "ntide": _features(50, seed=1)}, groups, ["male", "female"],
                            max_points=20)
    assert [t.name for t in fig.data] == ["male", "female", "male", "female"]
    assert sum(len(t.x) for t in fig.data[:2]) == 20 == sum(len(t.x) for t in fig.data[2:])
    assert [a.text for a in fig.layout.annotations] == ["student", "ntide"]
    with pytest.raises(ValueError, match="features of 'ntide' have 10 rows but groups has 50 entries"):
        plot_feature_maps({"ntide": _features(10)}, groups)
    with pytest.raises(ValueError, match="method must be 'pca' or 'tsne'"):
        feature_map(_features(), "umap")
    with pytest.raises(ValueError, match="features contain NaN or inf"):
        feature_map(np.full((5, 2), np.nan))


def test_training_curves():
    history = [{"epoch": 1, "loss": 2.0, "accuracy": 0.4}, {"epoch": 2, "loss": 1.0, "accuracy": 0.8}]
    fig = plot_training_curves({"student": history, "clip_probe": []})
    assert len(fig.data) == 2 and list(fig.data[0].y) == [2.0, 1.0] and list(fig.data[1].y) == [0.4, 0.8]
    with pytest.raises(ValueError, match="no training history"):
        plot_training_curves({"clip_probe": []})
