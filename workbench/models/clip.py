"""HookedCLIP: both towers of an open_clip CLIP behind one TransformerLens-style hook namespace."""
from __future__ import annotations

import hashlib
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformer_lens import HookedRootModule

from .preprocess import OPENAI_MEAN, OPENAI_STD, Preprocess
from .text import HookedTextTransformer
from .tokenize import prompt_list, unknown_words, warn_unknown_words
from .tokenize import tokenize as checked_tokenize
from .vit import HookedViT

TextInput = Union[str, Sequence[str], Tensor]


class HookedCLIP(HookedRootModule):
    """A CLIP model with hooks everywhere.

    Image-tower hooks keep their bare TransformerLens names (`blocks.3.attn.hook_z`, `hook_image_embed`);
    text-tower hooks live under `text.` (`text.blocks.0.hook_resid_post`, `text.hook_text_embed`).
    `run_with_cache`, `run_with_hooks` and `hooks()` work as in transformer_lens:

        embed, cache = model.run_with_cache(images, names_filter=lambda n: n.endswith("hook_cls_result"))
        embed, cache = model.run_with_cache(text=["a photo of a nurse"])

    Attributes: `visual` (HookedViT), `text` (HookedTextTransformer), `logit_scale`, `preprocess`,
    `tokenizer`, `name` and `pretrained` (provenance, used by intervention specs).
    """

    def __init__(self, visual: HookedViT, text: Optional[HookedTextTransformer], logit_scale: float = 100.0,
                 logit_bias: Optional[float] = None, preprocess: Optional[Preprocess] = None, tokenizer=None,
                 name: str = "custom", pretrained: Optional[str] = None):
        super().__init__()
        self.visual = visual
        self.text = text
        self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale)))
        self.logit_bias = None if logit_bias is None else nn.Parameter(torch.tensor(float(logit_bias)))
        self.preprocess = preprocess or Preprocess(visual.cfg.image_size)
        self.tokenizer = tokenizer
        self.name, self.pretrained = name, pretrained
        self._fingerprint: Optional[tuple] = None  # (weights state, sha256)
        self.setup()

    def setup(self):
        # Merge the towers' dictionaries rather than walking modules, so names stay as each tower defines them.
        self.mod_dict, self.hook_dict = {}, {}
        for tower in (self.visual, self.text):
            if tower is not None:
                self.mod_dict.update(tower.mod_dict)
                self.hook_dict.update(tower.hook_dict)

    @classmethod
    def from_open_clip(cls, model: nn.Module, *, preprocess=None, tokenizer=None, name: str = "custom",
                       pretrained: Optional[str] = None) -> "HookedCLIP":
        """Convert an instantiated open_clip `CLIP` (or `CustomTextCLIP`); config is read from its modules."""
        from .convert import convert_text, convert_visual

        visual = convert_visual(model.visual)
        text = convert_text(model)
        scale = model.logit_scale.detach().exp().item() if hasattr(model, "logit_scale") else 100.0
        bias = model.logit_bias.item() if getattr(model, "logit_bias", None) is not None else None
        if preprocess is None:
            pp = getattr(model.visual, "preprocess_cfg", None) or {}
            preprocess = Preprocess(visual.cfg.image_size, pp.get("mean") or OPENAI_MEAN, pp.get("std") or OPENAI_STD)
        if tokenizer is None and text.cfg.vocab_size == 49408:
            from open_clip.tokenizer import SimpleTokenizer

            tokenizer = SimpleTokenizer(context_length=text.cfg.n_ctx)
        hooked = cls(visual, text, scale, bias, preprocess, tokenizer, name, pretrained)
        return hooked.to(next(model.parameters()).device)

    # ------------------------------------------------------------------ encoding
    def tokenize(self, texts: Union[str, Sequence[str]], truncate: bool = False) -> Tensor:
        """Strings → token ids [b, n_ctx] (int64) on the model's device, checked (docs/inputs.md).

        Raises TypeError unless `texts` is a string or a list of strings, and ValueError naming the prompts
        longer than the context unless `truncate=True` (which cuts them with a TruncatedPromptWarning).
        Warns (UnknownWordsWarning) naming words whose tokens the model never saw (all-zero embeddings)."""
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer; pass token ids [b, n_ctx] or construct it with tokenizer=...")
        if self.text is None:
            raise ValueError("this model has no text tower")
        prompts = prompt_list(texts)
        tokens = checked_tokenize(self.tokenizer, prompts, self.text.cfg.n_ctx, truncate=truncate)
        warn_unknown_words(unknown_words(self.tokenizer, prompts, self.text.unknown_token_mask(), tokens),
                           len(prompts))
        return tokens.to(self.device)

    def encode_image(self, images: Tensor, normalize: bool = False) -> Tensor:
        """images [b, 3, H, W] from `model.preprocess` → [b, d_embed].

        Raises TypeError for anything but a tensor (PIL images go through `model.preprocess` first) and
        ValueError for the wrong shape or NaN/inf values (docs/inputs.md)."""
        if not isinstance(images, Tensor):
            raise TypeError(f"encode_image takes preprocessed images, a float tensor [b, 3, H, W]; got "
                            f"{type(images).__name__}: call model.encode_image(model.preprocess(images)) "
                            "(preprocess takes PIL images, lists of them, uint8 tensors and float tensors in [0, 1])")
        x = self.visual(images.to(self.device))
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, text: TextInput, normalize: bool = False, truncate: bool = False) -> Tensor:
        """Strings (a string or a list of them) or token ids [b, n_ctx] from `tokenize` → [b, d_embed].

        Strings are checked as in `tokenize` (overlong prompts raise unless `truncate=True`)."""
        if self.text is None:
            raise ValueError("this model has no text tower")
        tokens = text.to(self.device) if isinstance(text, Tensor) else self.tokenize(text, truncate=truncate)
        x = self.text(tokens)
        return F.normalize(x, dim=-1) if normalize else x

    def forward(self, image: Optional[Tensor] = None, text: Optional[TextInput] = None, truncate: bool = False):
        """Image and/or text embeddings (unnormalised): the image's if only images are given, the text's if
        only text is given, else a tuple (image_embed, text_embed). Inputs as in encode_image / encode_text."""
        if image is None and text is None:
            raise ValueError("pass images, text, or both")
        img = self.encode_image(image) if image is not None else None
        txt = self.encode_text(text, truncate=truncate) if text is not None else None
        if img is None:
            return txt
        return img if txt is None else (img, txt)

    def logits(self, images: Tensor, text: TextInput) -> Tensor:
        """Scaled cosine similarities [n_images, n_texts] (open_clip convention)."""
        img = self.encode_image(images, normalize=True)
        txt = self.encode_text(text, normalize=True)
        out = self.logit_scale * img @ txt.T
        return out + self.logit_bias if self.logit_bias is not None else out

    # ------------------------------------------------------------------ identity
    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    def _weights_state(self) -> tuple:
        # In-place edits bump a tensor's version counter; together with the storage pointer this tells
        # whether the weights may have changed since the fingerprint was computed.
        return tuple((t.data_ptr(), t._version) for t in self.state_dict().values())

    def fingerprint(self) -> str:
        """sha256 over all parameters (names, shapes, dtypes and bytes); identifies the exact weights.

        Cached, and recomputed whenever a parameter is replaced or edited in place."""
        state = self._weights_state()
        if self._fingerprint is None or self._fingerprint[0] != state:
            h = hashlib.sha256()
            for name, p in sorted(self.state_dict().items()):
                t = p.detach().cpu().contiguous().reshape(-1)  # 0-d tensors cannot be viewed as bytes
                h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
                h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
            self._fingerprint = (state, h.hexdigest())
        return self._fingerprint[1]

    # ------------------------------------------------------------------ spliced SAEs (see splice.py)
    def add_sae(self, sae, site: Optional[str] = None, use_error_term: bool = False, strict: bool = True) -> str:
        """Splice a sae_lens SAE at `site` (default: the site its metadata records): `{site}.hook_sae_input`,
        `hook_sae_acts_pre`, `hook_sae_acts_post`, `hook_sae_recons`, `hook_sae_error`, `hook_sae_output` become
        hook points. use_error_term=True keeps the output exact until they are edited. Returns the site."""
        from .splice import add_sae

        return add_sae(self, sae, site=site, use_error_term=use_error_term, strict=strict)

    def saes(self, *saes, use_error_term: bool = False, strict: bool = True):
        """Context manager splicing SAEs (or (sae, site) pairs) for the block: `with model.saes(sae): ...`."""
        from .splice import saes as splice_saes

        return splice_saes(self, *saes, use_error_term=use_error_term, strict=strict)

    def remove_saes(self, sites=None) -> list:
        """Remove the SAEs spliced at `sites` (a name, a list, default all); returns them."""
        from .splice import remove_saes

        return remove_saes(self, sites)

    def spliced_saes(self) -> dict:
        """{site: sae} for the SAEs spliced into the model."""
        from .splice import spliced_saes

        return spliced_saes(self)

    def summary(self) -> str:
        lines = [f"HookedCLIP {self.name!r} (pretrained={self.pretrained!r}) on {self.device}",
                 f"  image: {self.visual!r}"]
        if self.text is not None:
            lines.append(f"  text:  {self.text!r}")
        lines.append(f"  {len(self.hook_dict)} hook points; logit_scale={self.logit_scale.item():.2f}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.summary()
