"""Cost of the image tower's input check (finite values) against one forward pass, ViT-B-32, batch 16.

Prints the median wall time of `encode_image` (which runs the check), of the check alone
(`check_finite`), and their ratio. Goal: the check costs < 1 % of the forward pass.
Runs are interleaved so background load affects both alike.

    python benchmarks/bench_input_checks.py [--model ViT-B-32] [--batch 16] [--repeats 15] [--threads N]
"""
import argparse
import os
import statistics
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()

    import open_clip
    import torch

    from workbench.models import HookedCLIP
    from workbench.models.preprocess import check_finite

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        native = open_clip.create_model(args.model, pretrained=None).eval().to(args.device)
    model = HookedCLIP.from_open_clip(native).eval().to(args.device)
    del native
    x = torch.randn(args.batch, 3, *model.visual.cfg.image_size, device=args.device)

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def timed(fn) -> float:
        sync()
        start = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - start

    forward, check = [], []
    with torch.no_grad():
        model.encode_image(x)  # warm-up
        for _ in range(args.repeats):
            forward.append(timed(lambda: model.encode_image(x)))
            check.append(min(timed(lambda: check_finite(x)) for _ in range(5)))
    f, c = statistics.median(forward), statistics.median(check)
    print(f"{args.model}, batch {args.batch}, {torch.get_num_threads()} threads, {args.device}, "
          f"{args.repeats} repeats (medians)")
    print(f"  encode_image (includes the check): {f * 1e3:8.2f} ms")
    print(f"  check_finite alone:                {c * 1e3:8.3f} ms  = {100 * c / f:.3f} % of the forward pass")


if __name__ == "__main__":
    main()
