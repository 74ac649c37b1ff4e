"""N-TIDE stage 2: the image-only student — a backbone, a Linear to features, a classifier.

    student = Student("small_cnn", n_classes=8, feature_dim=64)
    logits, features = student(images)        # images: uint8 or float in [0, 1], [b, 3, s, s]

Backbones (`BACKBONES`): "small_cnn" (four stride-2 conv blocks, trained from scratch: the default, since no
ImageNet weights can be downloaded here), "resnet18" and "resnet50" (torchvision, random init unless `weights=`
points at a local file: safetensors, or a torch file read with weights_only=True; a torchvision-style state dict
whose `fc.*` is dropped). The student normalises its input itself (CLIP's mean and std, as the reference does for
teacher and student), so checkpoints are self-contained. See docs/ntide.md.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["BACKBONES", "SmallCNN", "Student", "build_backbone", "load_weights", "student_loss"]

BACKBONES = ("small_cnn", "resnet18", "resnet50")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _conv_block(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class SmallCNN(nn.Sequential):
    """Four conv(3×3, stride 2) → BatchNorm → ReLU blocks, then global average pooling: [b, 3, s, s] → [b, widths[-1]].

    About 0.4 M parameters with the default widths (32, 64, 128, 256); a few ms per 64 px image on one CPU core.
    """

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128, 256)):
        layers, c = [], 3
        for w in widths:
            layers += _conv_block(c, w)
            c = w
        super().__init__(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_dim = c


def load_weights(module: nn.Module, path: Union[str, os.PathLike], what: str = "backbone") -> None:
    """Load a local state dict into `module` (safetensors, or torch.load(weights_only=True); never pickle).

    Keys of a classification head (`fc.*`) are dropped; any other missing or unexpected key, or a shape
    mismatch, raises a ValueError naming them."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} weights: no file {str(path)!r}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:  # a pickled object other than tensors, or not a torch file at all
            raise ValueError(f"{what} weights {str(path)!r} cannot be read as a state dict with "
                             f"weights_only=True ({type(e).__name__}: {str(e)[:200]}); save the state dict "
                             "(model.state_dict()) or convert it to safetensors") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{what} weights {str(path)!r} are not a flat state dict of tensors")
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.removeprefix("module.").startswith("fc.")}
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                parts.append(f"{len(keys)} {label} (e.g. {', '.join(keys[:3])})")
        raise ValueError(f"{what} weights {str(path)!r} do not fit the {type(module).__name__}: " + "; ".join(parts))
    module.load_state_dict(state)


def build_backbone(name: str, weights: Optional[Union[str, os.PathLike]] = None) -> tuple[nn.Module, int]:
    """(backbone [b, 3, s, s] → [b, out_dim], out_dim) by name, optionally loading local weights."""
    if name == "small_cnn":
        net = SmallCNN()
        out_dim = net.out_dim
    elif name in ("resnet18", "resnet50"):
        import torchvision

        net = getattr(torchvision.models, name)(weights=None)
        out_dim = net.fc.in_features
        net.fc = nn.Identity()
    else:
        raise ValueError(f"unknown student backbone {name!r}; choose one of {BACKBONES}")
    if weights is not None:
        load_weights(net, weights, what=f"{name} backbone")
    return net, out_dim


class Student(nn.Module):
    """Image-only student: backbone → Linear(out_dim → feature_dim) = features → Linear(feature_dim → C).

    forward(images [b, 3, s, s] uint8 or float in [0, 1]) → (logits [b, C], features [b, feature_dim]).
    """

    def __init__(self, backbone: str, n_classes: int, feature_dim: int,
                 weights: Optional[Union[str, os.PathLike]] = None):
        super().__init__()
        self.backbone_name = backbone
        self.backbone, out_dim = build_backbone(backbone, weights)
        self.proj = nn.Linear(out_dim, feature_dim)
        self.head = nn.Linear(feature_dim, n_classes)
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
        features = self.proj(self.backbone((x - self.mean) / self.std))
        return self.head(features), features

    def param_groups(self, lr_backbone: float, lr_head: float) -> list[dict]:
        """AdamW parameter groups: the backbone at one rate, proj and head at another (reference: 1e-5 / 1e-4
        for a pretrained backbone)."""
        return [{"params": list(self.backbone.parameters()), "lr": lr_backbone},
                {"params": list(self.proj.parameters()) + list(self.head.parameters()), "lr": lr_head}]

    def extra_repr(self) -> str:
        return f"backbone={self.backbone_name!r}, features={self.proj.out_features}, classes={self.head.out_features}"


def student_loss(logits: Tensor, labels: Tensor, features: Tensor, target: Optional[Tensor], lambda_s: float,
                 label_smoothing: float) -> Tensor:
    """CE(logits, y; label smoothing) + λ_s · (1 − mean_b cos(f_s, f_teacher)), the teacher's features detached."""
    loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    if lambda_s and target is not None:
        loss = loss + lambda_s * (1 - F.cosine_similarity(features, target.detach(), dim=-1).mean())
    return loss
