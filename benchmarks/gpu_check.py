"""One prepared GPU check for issues 10 and 13: run it on a machine with a GPU, get a JSON of figures.

    python benchmarks/gpu_check.py [--out FILE] [--steps N]   # on a GPU; < 8 minutes on an H200
    python benchmarks/gpu_check.py --smoke --out /tmp/g.json   # everything tiny, on CPU (by hand)

It runs, when present, the other engineers' checks ``benchmarks/gpu_check_metrics.py``,
``gpu_check_losses.py`` and ``gpu_check_train.py`` (each in its own process with a time budget,
``--smoke`` passed on, ``--out`` (or ``--json``) a JSON file whose contents are nested under the check's name;
a missing file is recorded as absent, a failure as its exit code and output tail), then its own:

* ``recipe_direct``: the h-gldv2 recipe (its model settings with random initialisation, its rank
  loss + proxy loss and optimizer; ``hglv2/configs/h-gldv2.yaml``) at 224 px on generated images
  (normal noise on the GPU, 4 images per class) with AMP, B = 256, one step = forward, loss,
  backward, optimizer step: images/s and peak GPU memory;
* ``recipe_grad_cache``: the same with B = 4096 through :func:`hglv2.train.gradcache.grad_cache_backward`
  (sub-batches of 256);
* ``grad_cache_exact``: float32, no AMP, a small batch: the gradient with caching against the
  direct gradient (max relative difference), on the GPU.

Figures go to ``--out`` (default ``$OUT/gpu_check.json`` when ``$OUT`` is set, else
``gpu_check.json``), written atomically, and are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hglv2.config import load_config  # noqa: E402
from hglv2.losses import build_loss  # noqa: E402
from hglv2.models import build_model  # noqa: E402
from hglv2.train.gradcache import grad_cache_backward  # noqa: E402
from hglv2.train.optim import decomposability_optimizer, model_optimizer  # noqa: E402

# name -> time budget (s) on the GPU; ours takes ~170 s on an H200, so the total stays < 8 minutes
OTHER_CHECKS = {"gpu_check_metrics": 100, "gpu_check_losses": 80, "gpu_check_train": 80}


def run_other(name: str, smoke: bool, budget_s: float) -> dict:
    """Run benchmarks/<name>.py in a child process; its JSON (or why there is none)."""
    script = ROOT / "benchmarks" / f"{name}.py"
    if not script.is_file():
        return {"status": "absent"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"{name}.json"
        # the output option the script declares (--out, or --json as gpu_check_metrics.py has)
        flag = (
            "--json" if '"--json"' in script.read_text() and '"--out"' not in script.read_text() else "--out"
        )
        cmd = [sys.executable, str(script), flag, str(out)] + (["--smoke"] if smoke else [])
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(
                cmd, cwd=ROOT, capture_output=True, text=True, timeout=budget_s, env={**os.environ}
            )
        except subprocess.TimeoutExpired as exc:
            tail = (exc.stdout or "")[-2000:] if isinstance(exc.stdout, str) else ""
            return {"status": "timeout", "budget_s": budget_s, "output_tail": tail}
        res: dict = {"status": "ok" if proc.returncode == 0 else "failed", "returncode": proc.returncode}
        res["seconds"] = round(time.perf_counter() - t0, 1)
        if out.is_file():
            try:
                res["figures"] = json.loads(out.read_text())
            except ValueError:
                res["figures_error"] = "not valid JSON"
        if proc.returncode != 0 or "figures" not in res:
            res["output_tail"] = (proc.stdout + proc.stderr)[-2000:]
        return res


def recipe(smoke: bool) -> tuple[dict, dict]:
    """(model kwargs, loss section) of the h-gldv2 recipe; tiny on CPU for --smoke."""
    cfg = load_config("h-gldv2")
    model_kw = dict(cfg["model"], pretrained=False)  # no downloads here: random initialisation
    if smoke:
        model_kw.update(backbone="tiny", width=8, embedding_dim=32)
    return cfg, model_kw


def make_batch(
    b: int, size: int, m: int, device: torch.device, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator(device="cpu").manual_seed(seed)
    images = torch.randn(b, 3, size, size, generator=g).to(device)
    fine = torch.arange(b) // m
    labels = torch.stack([fine, fine // 8, fine // 64], 1).to(device)
    return images, labels


class Step:
    """The recipe's training step on generated images (direct, or with gradient caching)."""

    def __init__(self, cfg: dict, model_kw: dict, device: torch.device, amp: bool, classes: int) -> None:
        torch.manual_seed(0)
        self.device, self.amp = device, amp and device.type == "cuda"
        self.model = build_model(**model_kw).to(device).train()
        lc = cfg["loss"]
        dim = model_kw["embedding_dim"]
        self.crit = build_loss(lc["name"], lc["kwargs"], num_classes=classes, embedding_dim=dim).to(device)
        self.weight = lc["weight"]
        self.dec = None
        dc = lc["decomposability"]
        if dc is not None:
            self.dec = build_loss(dc["name"], dc.get("kwargs") or {}, num_classes=classes, embedding_dim=dim)
            self.dec = self.dec.to(device)
            self.dec_weight = dc.get("weight", 0.1)
        # the recipe's optimizers: backbone / head groups, and the proxies' own
        self.opts = [model_optimizer(cfg, self.model)]
        if self.dec is not None:
            self.opts.append(decomposability_optimizer(cfg, self.dec))
        self.opts = [o for o in self.opts if o is not None]
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)

    def autocast(self):
        if self.amp:
            return torch.autocast("cuda", dtype=torch.float16)
        return torch.autocast("cpu", enabled=False)

    def loss(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        emb = emb.float()
        loss = self.weight * self.crit(emb, labels)
        if self.dec is not None:
            loss = loss + self.dec_weight * self.dec(emb, labels[:, 0])
        return loss

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, chunk: int = 0) -> float:
        for opt in self.opts:
            opt.zero_grad(set_to_none=True)
        if chunk:
            loss = grad_cache_backward(
                self.model,
                images,
                lambda e: self.loss(e, labels),
                chunk,
                device=self.device,
                backward=lambda v: self.scaler.scale(v).backward(),
                autocast=self.autocast,
            )
        else:
            with self.autocast():
                emb = self.model(images)
            loss = self.loss(emb, labels)
            self.scaler.scale(loss).backward()
        for opt in self.opts:
            self.scaler.step(opt)
        self.scaler.update()
        return float(loss.detach())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(
    cfg: dict, model_kw: dict, device: torch.device, b: int, size: int, steps: int, chunk: int, amp: bool
) -> dict:
    """Images/s (median over timed steps after 3 warm-up steps) and peak memory of the step."""
    m = cfg["sampler"]["m"]
    step = Step(cfg, model_kw, device, amp, classes=b // m)
    images, labels = make_batch(b, size, m, device, seed=1)
    if chunk:
        images = images.cpu().pin_memory() if device.type == "cuda" else images  # as the loader gives
    losses, times = [], []
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    for k in range(3 + steps):
        _sync(device)
        t0 = time.perf_counter()
        losses.append(step(images, labels, chunk))
        _sync(device)
        if k >= 3:
            times.append(time.perf_counter() - t0)
    res = {
        "batch_size": b,
        "image_size": size,
        "grad_cache_chunk": chunk,
        "amp": step.amp,
        "timed_steps": steps,
        "step_s_median": round(float(np.median(times)), 4),
        "images_per_s": round(b / float(np.median(times)), 1),
        "loss_first": round(losses[0], 5),
        "loss_last": round(losses[-1], 5),
        "losses_finite": bool(np.isfinite(losses).all()),
    }
    if device.type == "cuda":
        res["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    del step, images
    return res


def loss_time(cfg: dict, model_kw: dict, device: torch.device, b: int, repeats: int = 3) -> dict:
    """Seconds of the recipe's loss (rank + proxy), forward + backward, on B random embeddings."""
    m = cfg["sampler"]["m"]
    step = Step(cfg, model_kw, device, amp=False, classes=b // m)
    _, labels = make_batch(b, 8, m, device, seed=3)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats + 1):
        emb = torch.nn.functional.normalize(torch.randn(b, model_kw["embedding_dim"], device=device), dim=1)
        emb.requires_grad_(True)
        _sync(device)
        t0 = time.perf_counter()
        step.loss(emb, labels).backward()
        _sync(device)
        times.append(time.perf_counter() - t0)
    res = {"batch_size": b, "loss_fwd_bwd_s_median": round(float(np.median(times[1:])), 4)}
    if device.type == "cuda":
        res["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return res


def grad_cache_exact(cfg: dict, model_kw: dict, device: torch.device, b: int, size: int, chunk: int) -> dict:
    """Max |g_cached - g_direct| / max |g_direct| over parameters, float32 without TF32, no AMP,
    deterministic cuDNN (TF32 convolutions alone differ by ~1e-3, which SupRank's sharp sigmoid,
    tau = 0.01, amplifies)."""
    m = cfg["sampler"]["m"]
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (cudnn.allow_tf32, matmul.allow_tf32, cudnn.benchmark, cudnn.deterministic)
    cudnn.allow_tf32 = matmul.allow_tf32 = cudnn.benchmark = False
    cudnn.deterministic = True
    try:
        return _grad_cache_exact(cfg, model_kw, device, b, size, chunk, m)
    finally:
        cudnn.allow_tf32, matmul.allow_tf32, cudnn.benchmark, cudnn.deterministic = saved


def _grad_cache_exact(cfg: dict, model_kw: dict, device: torch.device, b: int, size: int, chunk: int, m: int):
    images, labels = make_batch(b, size, m, device, seed=2)
    grads = []
    for c in (0, chunk):
        step = Step(cfg, model_kw, device, amp=False, classes=b // m)
        for mod in step.model.modules():  # frozen BatchNorm (the authors' recipe): exact equality
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                mod.eval()
        for opt in step.opts:
            opt.zero_grad(set_to_none=True)
        if c:
            grad_cache_backward(step.model, images, lambda e, s=step: s.loss(e, labels), c, device=device)
        else:
            step.loss(step.model(images), labels).backward()
        grads.append(
            {n: p.grad.detach().clone() for n, p in step.model.named_parameters() if p.grad is not None}
        )
    worst = 0.0
    for n, g in grads[0].items():
        scale = float(g.abs().max()) or 1.0
        worst = max(worst, float((g - grads[1][n]).abs().max()) / scale)
    return {
        "batch_size": b,
        "image_size": size,
        "chunk": chunk,
        "max_rel_diff": worst,
        "params": len(grads[0]),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="everything tiny, on CPU")
    ap.add_argument("--out", default=None, help="JSON output (default $OUT/gpu_check.json or gpu_check.json)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps of the B=256 run (default 100)")
    ap.add_argument("--skip-others", action="store_true", help="do not run the gpu_check_*.py of others")
    ap.add_argument("--only", nargs="*", default=None, help="run only these of our own checks")
    args = ap.parse_args(argv)
    out = Path(
        args.out
        or (Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else "gpu_check.json")
    )
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    t_all = time.perf_counter()
    report: dict = {
        "smoke": args.smoke,
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
    }

    def save() -> None:
        report["total_s"] = round(time.perf_counter() - t_all, 1)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
        tmp.replace(out)

    if not args.skip_others:
        for name, budget in OTHER_CHECKS.items():
            report[name] = run_other(name, args.smoke, budget_s=120 if args.smoke else budget)
            print(name, report[name].get("status"), flush=True)
            save()

    cfg, model_kw = recipe(args.smoke)
    if args.smoke:
        size, b, big, chunk, steps, big_steps = 32, 16, 64, 16, args.steps or 3, 2
    else:
        size, b, big, chunk, steps, big_steps = 224, 256, 4096, 256, args.steps or 100, 5
    report["recipe"] = {"config": "h-gldv2", "model": model_kw, "loss": cfg["loss"]["name"]}
    for key, fn in (
        (
            "grad_cache_exact",
            lambda: grad_cache_exact(
                cfg,
                model_kw,
                device,
                32 if not args.smoke else 8,
                112 if not args.smoke else 32,
                8 if not args.smoke else 3,
            ),
        ),
        ("loss_time_direct", lambda: loss_time(cfg, model_kw, device, b)),
        ("loss_time_grad_cache", lambda: loss_time(cfg, model_kw, device, big)),
        ("recipe_direct", lambda: throughput(cfg, model_kw, device, b, size, steps, 0, amp=True)),
        (
            "recipe_grad_cache",
            lambda: throughput(cfg, model_kw, device, big, size, big_steps, chunk, amp=True),
        ),
    ):
        if args.only is not None and key not in args.only:
            continue
        t0 = time.perf_counter()
        try:
            report[key] = fn()
        except Exception as exc:  # record and go on: one failing check must not hide the others
            report[key] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
        report[key]["seconds"] = round(time.perf_counter() - t0, 1)
        print(key, json.dumps(report[key]), flush=True)
        save()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    save()
    print(f"wrote {out} in {report['total_s']} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
