"""N-TIDE stage 1: the teacher — a frozen CLIP, a learnable neutral token, a fusion MLP and a classifier.

    prompt = NeutralPrompt(model, init="person")            # "a photo of a <v>", v a learnable input embedding
    teacher = NTIDETeacher(model, n_classes=8, prompt=prompt)
    logits, f_neutral, f_null = teacher(image_features)     # image_features: normalize(encode_image(x)), [b, d_embed]

- Null text φ = the embedding of "" (computed once, frozen).
- Neutral text ψ(v) = the text tower run on "a photo of a <v>" where the input token embedding at <v> is the
  learnable vector v. v is put in through a hook on `text.hook_embed` (token + positional embedding), so ψ goes
  through the hooked text tower itself, and the pooled position is the one the tower finds from the tokens.
- Fuse = Linear(d_embed → d_embed/2) → ReLU → Linear(d_embed/2 → d_embed/2) on normalize(image) + normalize(text)
  (the reference: 1024 → 512 → 512 on RN50); the same Fuse serves both branches.
- f_null = Fuse(i + φ̂) without gradient; f_neutral = Fuse(i + ψ̂); logits = head(f_neutral).
- Loss (`teacher_loss`): CE with label smoothing + λ_t · MSE(f_neutral, f_null).

See docs/ntide.md.
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["NeutralPrompt", "NTIDETeacher", "Fuse", "teacher_loss", "frozen", "INITS"]

INITS = ("person", "random")
TEMPLATE = "a photo of a {}"


@contextlib.contextmanager
def frozen(model: nn.Module):
    """Turn off gradients of every parameter of `model` for the block (restored after): the CLIP teacher is
    frozen, and only the neutral token v receives a gradient through the text tower."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


class NeutralPrompt(nn.Module):
    """The learnable neutral text ψ(v): "a photo of a <v>" through the model's hooked text tower.

    init: "person" (v starts as the input token embedding of `word`, the reference default) or "random"
    (v ~ N(0, 0.02²), seeded). `template` must contain "{}" where the token goes; `word` must be one token.
    forward(model) → ψ [d_embed] (unnormalised text embedding).
    """

    def __init__(self, model, init: str = "person", *, template: str = TEMPLATE, word: str = "person",
                 seed: int = 0):
        super().__init__()
        if init not in INITS:
            raise ValueError(f"neutral-token init must be one of {INITS}, got {init!r}")
        if model.text is None or model.tokenizer is None:
            raise ValueError("N-TIDE's teacher needs a CLIP model with a text tower and a tokenizer")
        if template.count("{}") != 1:
            raise ValueError(f"the prompt template must contain '{{}}' once (where the neutral token goes), "
                             f"got {template!r}")
        word_ids = [int(t) for t in model.tokenizer.encode(word)]
        if len(word_ids) != 1:
            raise ValueError(f"the placeholder word {word!r} is {len(word_ids)} tokens for this tokenizer; "
                             "choose a word that is one token (e.g. 'person')")
        tokens = model.tokenize(template.format(word)).cpu()  # [1, n_ctx]
        found = (tokens[0] == word_ids[0]).nonzero().flatten().tolist()
        if not found:
            raise ValueError(f"the token of {word!r} is missing from the tokenized prompt (was it cut?)")
        position = found[-1]  # the placeholder (the template itself may contain the word earlier)
        pooled = int(model.text.pool_index(tokens)[0])
        if position >= pooled:  # causal mask: the pooled token must see <v>
            raise ValueError(f"the neutral token sits at position {position}, not before the pooled position "
                             f"{pooled}; shorten the template")
        embedding = model.text.token_embedding.detach()[word_ids[0]].float().cpu()
        if init == "person":
            if not embedding.abs().sum() > 0:
                raise ValueError(f"the model never saw the word {word!r} (its token embedding is all zeros); "
                                 "use init='random' or another word")
            v = embedding.clone()
        else:
            v = torch.randn(embedding.shape, generator=torch.Generator().manual_seed(seed)) * 0.02
        self.init, self.template, self.word = init, template, word
        self.position, self.pooled_position = position, pooled
        self.register_buffer("tokens", tokens, persistent=False)
        self.v = nn.Parameter(v)

    def forward(self, model) -> Tensor:
        p = self.position

        def put_token(x: Tensor, hook=None) -> Tensor:  # x: [1, n_ctx, d_model] token + positional embedding
            x = x.clone()
            x[:, p] = self.v.to(x.dtype) + model.text.positional_embedding[p].to(x.dtype)
            return x

        with model.hooks(fwd_hooks=[("text.hook_embed", put_token)]):
            return model.encode_text(self.tokens.to(model.device))[0].float()

    def extra_repr(self) -> str:
        return (f"template={self.template!r}, token at {self.position} (pooled at {self.pooled_position}), "
                f"init={self.init!r}, d_model={self.v.numel()}")


class Fuse(nn.Sequential):
    """Linear(d_in → hidden) → ReLU → Linear(hidden → d_out): the fusion MLP on image + text."""

    def __init__(self, d_in: int, hidden: int, d_out: int):
        super().__init__(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_out))


class NTIDETeacher(nn.Module):
    """Fuse + classifier over frozen CLIP image features, conditioned on the neutral text ψ (or on no text).

    model: the frozen HookedCLIP (kept outside the module tree: it is neither saved nor trained here).
    prompt: a NeutralPrompt, or None for the ablation without text (f = Fuse(i)).
    feature_dim: width of f (default d_embed // 2, the reference's 1024 → 512 ratio).
    forward(i [b, d_embed] normalised image features) → (logits [b, C], f_neutral [b, f], f_null [b, f] or None).
    """

    def __init__(self, model, n_classes: int, prompt: Optional[NeutralPrompt] = None,
                 feature_dim: Optional[int] = None):
        super().__init__()
        d = int(model.embed_dim if hasattr(model, "embed_dim") else model.text.cfg.d_embed)
        f = int(feature_dim or max(d // 2, 8))
        self.__dict__["clip"] = model  # not a submodule: the CLIP weights stay out of state_dict and the optimizer
        self.prompt = prompt
        self.fuse = Fuse(d, f, f)
        self.head = nn.Linear(f, n_classes)
        self.feature_dim, self.d_embed = f, d
        null = None
        if prompt is not None:
            with torch.no_grad():
                null = F.normalize(model.encode_text([""]).float(), dim=-1)[0].cpu()
        self.register_buffer("null", null if null is not None else torch.zeros(d))

    def text(self) -> Optional[Tensor]:
        """ψ̂ = normalize(ψ(v)) [d_embed], or None without a prompt."""
        if self.prompt is None:
            return None
        with frozen(self.clip):
            return F.normalize(self.prompt(self.clip), dim=-1)

    def forward(self, image: Tensor, text: Optional[Tensor] = None):
        if self.prompt is None:
            f = self.fuse(image)
            return self.head(f), f, None
        psi = self.text() if text is None else text
        f_neutral = self.fuse(image + psi.to(image.device))
        with torch.no_grad():  # the null branch: a moving target, no gradient (reference)
            f_null = self.fuse(image + self.null.to(image.device))
        return self.head(f_neutral), f_neutral, f_null

    def extra_repr(self) -> str:
        return f"d_embed={self.d_embed}, feature_dim={self.feature_dim}, text={'neutral' if self.prompt else 'none'}"


def teacher_loss(logits: Tensor, labels: Tensor, f_neutral: Tensor, f_null: Optional[Tensor], lambda_t: float,
                 label_smoothing: float) -> Tensor:
    """CE(logits, y; label smoothing) + λ_t · MSE(f_neutral, stop-grad f_null) (mean over batch × features)."""
    loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    if lambda_t and f_null is not None:
        loss = loss + lambda_t * F.mse_loss(f_neutral, f_null.detach())
    return loss
