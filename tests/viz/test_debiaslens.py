"""DebiasLens figures: the selected latents (top inputs, activation by group) and the α sweep show the numbers they
are given."""
import pandas as pd
import pytest
import torch

from workbench.methods.debiaslens import social_neurons
from workbench.viz.debiaslens import plot_alpha_sweep, plot_social_neurons


@pytest.fixture()
def neurons():
    acts = torch.zeros(6, 5)
    acts[:3, 1] = torch.tensor([1.0, 2.0, 3.0])  # latent 1: group 0 only, mean 2
    acts[3:, 4] = torch.tensor([4.0, 4.0, 1.0])  # latent 4: group 1 only, mean 3
    acts[:, 0] = 1.0  # everywhere: never exclusive
    return social_neurons(acts, {"gender": torch.tensor([0, 0, 0, 1, 1, 1])},
                          label_names={"gender": ["male", "female"]}, site="blocks.5.hook_resid_post")


def test_social_neurons_figure_shows_images_and_group_means(neurons):
    assert neurons.latents() == [1, 4]
    images = {1: [torch.rand(3, 8, 8) for _ in range(3)], 4: [torch.rand(3, 8, 8)]}
    fig = plot_social_neurons(neurons, images, title="t")
    strips = [t for t in fig.data if t.type == "image"]
    bars = [t for t in fig.data if t.type == "bar"]
    assert len(strips) == 2 and strips[0].z.shape == (8, 3 * (8 + 2), 3)  # three 8-px images with 2-px gaps
    assert list(bars[0].x) == ["gender: male", "gender: female"]
    assert list(bars[0].y) == pytest.approx([2.0, 0.0]) and list(bars[1].y) == pytest.approx([0.0, 3.0])
    assert list(bars[0].customdata) == pytest.approx([1.0, 0.0])  # fires on every male input, no female one
    titles = [a.text for a in fig.layout.annotations]
    assert "latent 1 (selected for gender/male)" in titles and "latent 4 (selected for gender/female)" in titles


def test_the_result_plots_itself_without_examples(neurons):
    fig = neurons.plot()
    assert [list(t.y) for t in fig.data if t.type == "bar"] == [pytest.approx([2.0, 0.0]), pytest.approx([0.0, 3.0])]
    assert "(no inputs)" in [a.text for a in fig.layout.annotations]


def test_social_neurons_figure_lists_prompts_for_the_text_side(neurons):
    fig = plot_social_neurons(neurons, {1: ["a photo of a man", "a man"], 4: ["a woman"]})
    texts = [a.text for a in fig.layout.annotations]
    assert "a photo of a man<br>a man" in texts and "a woman" in texts
    assert not [t for t in fig.data if t.type == "image"]


def test_social_neurons_figure_when_nothing_was_selected_and_bad_examples(neurons):
    empty = social_neurons(torch.ones(4, 3), {"gender": torch.tensor([0, 1, 0, 1])})
    fig = plot_social_neurons(empty, {})
    assert "no social neurons at τ = 1" in fig.layout.annotations[0].text
    with pytest.raises(ValueError, match=r"examples has latents \[2\] that the search did not select \(\[1, 4\]\)"):
        plot_social_neurons(neurons, {2: ["x"]})


def test_alpha_sweep_figure_plots_the_table():
    sweep = pd.DataFrame({"tower": ["i", "i", "t", "t"], "alpha": [0.0, 0.6, 0.0, 0.6],
                          "maxskew_occupations": [0.2, 0.1, 0.2, 0.3], "zero_shot_accuracy": [0.9, 0.88, 0.9, 0.91],
                          "zero_shot_accuracy_lo": [0.85, 0.8, 0.85, 0.87],
                          "zero_shot_accuracy_hi": [0.95, 0.9, 0.95, 0.93]})
    fig = plot_alpha_sweep(sweep)
    by_name = {}
    for trace in fig.data:
        by_name.setdefault(trace.name, []).append(trace)
    assert set(by_name) == {"image", "text"}
    bias, utility = by_name["image"]
    assert list(bias.y) == [0.2, 0.1] and list(utility.y) == [0.9, 0.88]
    assert list(utility.error_y.array) == pytest.approx([0.05, 0.02])
    assert list(utility.error_y.arrayminus) == pytest.approx([0.05, 0.08])
    assert len(plot_alpha_sweep(sweep.drop(columns=["zero_shot_accuracy"]), utility=None).data) == 2
    with pytest.raises(ValueError, match=r"the sweep table lacks the columns \['map'\]"):
        plot_alpha_sweep(sweep, utility="map")
