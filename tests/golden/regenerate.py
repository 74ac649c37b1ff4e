"""Regenerate the golden values in this folder from the shipped model. Not run by the tests.

    python3 tests/golden/regenerate.py

Run it only when a change is meant to move the values (a retrained `synthsocial` checkpoint, a new
demo protocol), and say why in the commit. It writes:

- decomposition.safetensors: a fixed batch of 8 SynthSocial test_balanced images (uint8, so the batch
  itself is frozen), their unnormalised `encode_image` [8, d_embed] and `visual.decompose` components
  [8, n_components, d_embed]; metadata: component names (JSON list), the model fingerprint, versions.
- demo.json: what `workbench demo` (default size) selects and measures: heads, bias attribution [L][H],
  metrics before and after the intervention, the model fingerprint, versions.
- demo_prototypes.safetensors: the neutral prototype the exported spec writes for each selected head
  ("L{l}H{h}" → [d_model]).
"""
from __future__ import annotations

import json
import platform
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the repository root, when run as a script

from tests.golden.golden import DECOMPOSITION, DEMO_JSON, DEMO_PROTOTYPES, golden_batch_uint8


def versions() -> dict:
    import numpy

    import workbench

    return {"torch": torch.__version__, "numpy": numpy.__version__, "python": platform.python_version(),
            "workbench": workbench.__version__}


def write_decomposition(model) -> None:
    from safetensors.torch import save_file

    images = golden_batch_uint8()
    x = model.preprocess(images.float() / 255)
    parts = model.visual.decompose(x)
    with torch.no_grad():
        embed = model.encode_image(x)
    meta = {"labels": json.dumps(parts.labels), "fingerprint": model.fingerprint(),
            "source": "SynthSocial('test_balanced', seed=0, n=64).tensors(0, 8), quantised to uint8",
            "versions": json.dumps(versions())}
    save_file({"images": images.contiguous(), "image_embed": embed.contiguous(),
               "components": parts.components.contiguous()}, str(DECOMPOSITION), metadata=meta)


def write_demo(model) -> None:
    from safetensors.torch import save_file

    from workbench.demo import run_demo
    from workbench.primitives import InterventionSpec

    with tempfile.TemporaryDirectory() as out:
        summary = run_demo(out_dir=out)
        spec = InterventionSpec.load(summary["spec"])
        prototypes = {f"L{e.layer}H{e.head}": torch.as_tensor(e.value).float().contiguous() for e in spec.edits}
    golden = {"fingerprint": model.fingerprint(), "versions": versions(),
              **{k: summary[k] for k in ("evaluation", "reference", "heads", "attribution", "before", "after")}}
    DEMO_JSON.write_text(json.dumps(golden, indent=2) + "\n")
    save_file(prototypes, str(DEMO_PROTOTYPES))


if __name__ == "__main__":
    from workbench.models import load_clip

    torch.manual_seed(0)
    model = load_clip("synthsocial")
    write_decomposition(model)
    write_demo(model)
    print(f"wrote {DECOMPOSITION.name}, {DEMO_JSON.name}, {DEMO_PROTOTYPES.name} in {HERE}")
