"""N-TIDE building blocks (docs/ntide.md): the neutral prompt through the hooked text tower, the teacher and student
losses against literal transcriptions of the reference formulas, the student's weight loading, and the checks that
refuse a task before any training."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from workbench import load_clip
from workbench.methods.ntide import NTIDEConfig
from workbench.methods.ntide_data import Split, check_task
from workbench.methods.ntide_student import SmallCNN, Student, load_weights, student_loss
from workbench.models.tokenize import UnknownWordsWarning
from workbench.methods.ntide_teacher import NeutralPrompt, NTIDETeacher, teacher_loss


@pytest.fixture(scope="module")
def model():
    return load_clip("synthsocial")


def test_person_init_reproduces_the_plain_prompt_and_the_placeholder_is_found_from_tokens(model):
    prompt = NeutralPrompt(model, "person")
    assert (prompt.position, prompt.pooled_position) == (5, 6)  # [SOT, a, photo, of, a, person, EOT]
    torch.testing.assert_close(prompt(model), model.encode_text(["a photo of a person"])[0], atol=0, rtol=0)
    # a longer template moves both positions; they are read from the tokens, not hard-coded
    longer = NeutralPrompt(model, "person", template="a photo of a doctor photo of a {}")
    assert (longer.position, longer.pooled_position) == (9, 10)
    torch.testing.assert_close(longer(model), model.encode_text(["a photo of a doctor photo of a person"])[0],
                               atol=0, rtol=0)


def test_the_learned_token_changes_psi_and_only_v_gets_a_gradient(model):
    prompt = NeutralPrompt(model, "person")
    teacher = NTIDETeacher(model, n_classes=8, prompt=prompt)
    with torch.no_grad():
        prompt.v.add_(0.5)
    assert not torch.allclose(prompt(model), model.encode_text(["a photo of a person"])[0])
    x = F.normalize(torch.randn(4, 128, generator=torch.Generator().manual_seed(0)), dim=-1)
    logits, f_neutral, f_null = teacher(x)
    teacher_loss(logits, torch.tensor([0, 1, 2, 3]), f_neutral, f_null, 1.0, 0.1).backward()
    assert prompt.v.grad is not None and prompt.v.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())  # CLIP stays frozen ...
    assert all(p.requires_grad for p in model.parameters())  # ... and its flags are restored afterwards
    assert not f_null.requires_grad
    # the null branch is Fuse(i + normalize(encode_text(""))), the neutral one Fuse(i + normalize(ψ))
    null = F.normalize(model.encode_text([""]), dim=-1)[0]
    torch.testing.assert_close(f_null, teacher.fuse(x + null))
    torch.testing.assert_close(f_neutral, teacher.fuse(x + F.normalize(prompt(model), dim=-1)))
    assert not any(k.startswith(("visual", "text.")) for k in teacher.state_dict())  # CLIP is not saved with it


def test_random_init_and_refusals(model):
    random = NeutralPrompt(model, "random", seed=3)
    assert random.v.std().item() == pytest.approx(0.02, rel=0.25) and abs(random.v.mean().item()) < 0.01
    torch.testing.assert_close(random.v, NeutralPrompt(model, "random", seed=3).v)
    with pytest.raises(ValueError, match="neutral-token init must be one of"):
        NeutralPrompt(model, "zeros")
    with pytest.raises(ValueError, match=r"must contain '\{\}' once"):
        NeutralPrompt(model, template="a photo of a person")
    with pytest.warns(UnknownWordsWarning, match="'neutral'"), \
            pytest.raises(ValueError, match="the model never saw the word 'neutral'"):
        NeutralPrompt(model, "person", word="neutral")


def test_teacher_loss_is_ce_with_smoothing_plus_lambda_mse():
    g = torch.Generator().manual_seed(1)
    logits, y = torch.randn(6, 4, generator=g), torch.tensor([0, 1, 2, 3, 0, 1])
    f_neutral, f_null = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    # literal: CE with label smoothing ε: (1−ε)·(−log p_y) + ε·mean_k(−log p_k); MSE: mean over batch × features
    logp = logits.log_softmax(-1)
    ce = ((1 - 0.1) * -logp[torch.arange(6), y] + 0.1 * -logp.mean(-1)).mean()
    mse = ((f_neutral - f_null) ** 2).sum() / (6 * 5)
    torch.testing.assert_close(teacher_loss(logits, y, f_neutral, f_null, 2.0, 0.1), ce + 2.0 * mse)
    torch.testing.assert_close(teacher_loss(logits, y, f_neutral, f_null, 0.0, 0.1), ce)


def test_student_loss_is_ce_plus_lambda_one_minus_mean_cosine():
    g = torch.Generator().manual_seed(2)
    logits, y = torch.randn(5, 3, generator=g), torch.tensor([0, 1, 2, 0, 1])
    f_s, f_t = torch.randn(5, 7, generator=g, requires_grad=True), torch.randn(5, 7, generator=g, requires_grad=True)
    cos = torch.stack([torch.dot(a, b) / (a.norm() * b.norm()) for a, b in zip(f_s, f_t)])
    expected = F.cross_entropy(logits, y) + 0.5 * (1 - cos.mean())
    loss = student_loss(logits, y, f_s, f_t, 0.5, 0.0)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert f_t.grad is None and f_s.grad is not None  # the teacher side is detached


def test_student_normalises_uint8_and_float_alike():
    torch.manual_seed(0)
    student = Student("small_cnn", n_classes=3, feature_dim=8).eval()
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    a, fa = student(x)
    b, fb = student(x.float() / 255)
    torch.testing.assert_close(a, b)
    assert a.shape == (2, 3) and fa.shape == (2, 8)


def test_local_backbone_weights(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    source = SmallCNN()
    state = {k: v.clone() for k, v in source.state_dict().items()}
    state["fc.weight"] = torch.zeros(2, 2)  # a classification head is dropped
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save(state, tmp_path / "w.pt")
    for name in ("w.safetensors", "w.pt"):
        student = Student("small_cnn", 3, 8, weights=tmp_path / name)
        for k, v in source.state_dict().items():
            assert torch.equal(student.backbone.state_dict()[k], v)
    bad = dict(state)
    del bad["0.weight"]
    save_file(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match=r"do not fit the SmallCNN: 1 missing \(e.g. 0.weight\)"):
        load_weights(SmallCNN(), tmp_path / "bad.safetensors")
    torch.save({"net": SmallCNN()}, tmp_path / "pickled.pt")  # a pickled module, not a state dict
    with pytest.raises(ValueError, match="cannot be read as a state dict with weights_only=True"):
        load_weights(SmallCNN(), tmp_path / "pickled.pt")
    with pytest.raises(FileNotFoundError, match="no file"):
        load_weights(SmallCNN(), tmp_path / "none.pt")


def _split(y, g, names=None):
    n = len(y)
    return Split(torch.zeros(n, 3, 8, 8, dtype=torch.uint8), torch.zeros(n, 4),
                 {"t": torch.tensor(y), "g": torch.tensor(g)}, names or {"t": ("a", "b", "c"), "g": ("m", "f")})


def test_task_checks_fail_before_training_with_the_reason():
    train = _split([0, 1, 2, 0, 1, 2], [0, 1, 0, 1, 0, 1])
    task = check_task(train, _split([0, 1, 2, 0, 1, 2], [0, 0, 0, 1, 1, 1]), "t", "g")
    assert task["n_classes"] == 3 and task["classes"] == [0, 1, 2] and task["groups"] == [0, 1]
    with pytest.raises(ValueError, match="--target and --group are both 't'"):
        check_task(train, train, "t", "t")
    with pytest.raises(ValueError, match=r"class\(es\) \['c'\] of 't' occur in the test split but have no training"):
        check_task(_split([0, 1, 0, 1], [0, 1, 1, 0]), train, "t", "g")
    with pytest.raises(ValueError, match="the test split holds a single 'g' group \\('f'\\)"):
        check_task(train, _split([0, 1, 2], [1, 1, 1]), "t", "g")
    with pytest.raises(ValueError, match=r"1 \(class × group\) cell\(s\) of the test split are empty, e.g. 'c' × 'f'"):
        check_task(train, _split([0, 1, 2, 0, 1], [0, 0, 0, 1, 1]), "t", "g")
    assert check_task(train, _split([0, 1, 2, 0, 1], [0, 0, 0, 1, 1]), "t", "g", undefined="zero")["groups"] == [0, 1]
    with pytest.raises(ValueError, match="hold class code 5, outside the 3 classes"):
        check_task(_split([0, 1, 5], [0, 1, 0]), train, "t", "g")


def test_config_checks():
    assert NTIDEConfig(lambda_t=0.5).lambda_t == (0.5,)
    assert NTIDEConfig(lambda_s=[1, 2]).lambda_s == (1.0, 2.0)
    with pytest.raises(ValueError, match="lambda_t must be one or more non-negative numbers"):
        NTIDEConfig(lambda_t=(-1,))
    with pytest.raises(ValueError, match="student_epochs must be a positive integer"):
        NTIDEConfig(student_epochs=0)
    with pytest.raises(ValueError, match="label_smoothing must lie in"):
        NTIDEConfig(label_smoothing=1.0)
    assert np.isclose(NTIDEConfig().to_dict()["lambda_t"][0], 1.0)


def test_registered_by_name():
    from workbench.methods import get_method
    from workbench.methods.ntide import run_ntide

    assert get_method("ntide") is run_ntide


def test_torchvision_backbones_build_offline_and_unknown_names_are_refused():
    torch.manual_seed(0)
    student = Student("resnet18", n_classes=4, feature_dim=16).eval()
    logits, features = student(torch.rand(2, 3, 64, 64))
    assert logits.shape == (2, 4) and features.shape == (2, 16) and student.proj.in_features == 512
    with pytest.raises(ValueError, match=r"unknown student backbone 'vgg16'; choose one of \('small_cnn', 'resnet18'"):
        Student("vgg16", 4, 16)
