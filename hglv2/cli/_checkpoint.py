"""The checkpoint modes of ``hglv2 evaluate`` (options and dispatch; the work is in
:mod:`hglv2.evaluation`):

* ``--checkpoint RUN_OR_FILE --data DIR [--query SPLIT --gallery SPLIT]``: embed a split folder
  and report the metrics; the embeddings and labels are written to ``--out`` (default
  ``<run>/eval/<data folder name>``) as ``.npy`` for reuse with ``-e/-l``.
* ``--checkpoint ... --protocol roxford5k|rparis6k --data DIR``: Revisited Oxford/Paris (``DIR``
  holds ``gnd_<name>.pkl`` and ``jpg/``), Medium and Hard mAP.
* ``--checkpoint ... --landmark-table --roxford DIR --rparis DIR --gldv2 DIR``: the paper's
  landmark table (ROxf-M/H, RPar-M/H, GLDv2 mAP@100, H-AP, ASI, NDCG).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from hglv2.errors import InputError

_PATH = click.Path(path_type=Path)

OPTIONS = [
    click.option("--checkpoint", type=_PATH, help="A run folder of `hglv2 train` or a checkpoint file."),
    click.option("--config", "ckpt_config", type=_PATH, help="The run's config (default: found beside it)."),
    click.option("--data", type=_PATH, help="Split folder, or the Revisited Oxford/Paris folder."),
    click.option("--query", "query_split", help="Query split (default: query, test or val)."),
    click.option("--gallery", "gallery_split", help="Gallery split (default: index after query; else none)."),
    click.option("--image-root", type=_PATH, help="Image folder (default: from the data manifest)."),
    click.option("--out", "out_dir", type=_PATH, help="Where the embeddings go (.npy)."),
    click.option(
        "--protocol",
        type=click.Choice(["splits", "roxford5k", "rparis6k"]),
        default="splits",
        show_default=True,
        help="Evaluation protocol of --checkpoint.",
    ),
    click.option(
        "--landmark-table", is_flag=True, help="The paper's landmark table (needs the three folders)."
    ),
    click.option("--roxford", type=_PATH, help="Revisited Oxford folder (landmark table)."),
    click.option("--rparis", type=_PATH, help="Revisited Paris folder (landmark table)."),
    click.option("--gldv2", type=_PATH, help="GLDv2 split folder with query and index (landmark table)."),
    click.option(
        "--imsize",
        type=click.IntRange(min=0),
        default=224,
        show_default=True,
        help="Revisited: square resize (0: full size, batch of 1).",
    ),
    click.option(
        "--embed-device",
        default=None,
        help="Where the model embeds the images: cpu, cuda, cuda:1 (default: cuda when available).",
    ),
    click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True),
    click.option("--num-workers", type=click.IntRange(min=0), default=0, show_default=True),
    click.option("--amp/--no-amp", default=True, show_default=True, help="float16 autocast on CUDA."),
]


def checkpoint_options(f: Callable) -> Callable:
    for option in reversed(OPTIONS):
        f = option(f)
    return f


def run_checkpoint(
    p: dict[str, Any], metric_options: dict[str, Any], say: Callable[[str], Any] = click.echo
) -> dict[str, Any]:
    """Run the mode chosen by the options in ``p``; report lines through ``say``; return the JSON-ready
    output. The caller passes a collecting ``say`` so that files are written before anything is printed."""
    from hglv2.evaluation import protocols
    from hglv2.evaluation.checkpoint import default_eval_dir

    ckpt = p["checkpoint"]
    common = dict(
        config=p["ckpt_config"],
        device=p["embed_device"],
        batch_size=p["batch_size"],
        num_workers=p["num_workers"],
        amp=p["amp"],
    )
    if p["landmark_table"]:
        missing = [o for o in ("roxford", "rparis", "gldv2") if p[o] is None]
        if missing:
            raise InputError(f"--landmark-table needs {', '.join('--' + m for m in missing)}")
        row = protocols.landmark_table(
            ckpt,
            roxford=p["roxford"],
            rparis=p["rparis"],
            gldv2=p["gldv2"],
            gldv2_image_root=p["image_root"],
            imsize=p["imsize"],
            hap_convention=metric_options.get("hap_convention", "hglv2"),
            **common,
        )
        say(protocols.format_landmark_table(row))
        return {"mode": "landmark-table", "checkpoint": str(ckpt), "columns": list(row), "results": row}
    if p["data"] is None:
        raise InputError("--checkpoint needs --data (or --landmark-table)")
    if p["protocol"] != "splits":
        res = protocols.evaluate_revisited(
            ckpt, p["data"], p["protocol"], imsize=p["imsize"], out_dir=p["out_dir"], **common
        )
        say(
            f"{p['protocol']}: {res['n_queries']} queries, {res['n_gallery']} images; "
            f"mAP Medium {100 * res['mAP_medium']:.2f}  Hard {100 * res['mAP_hard']:.2f}  "
            f"Easy {100 * res['mAP_easy']:.2f}"
        )
        return {"mode": p["protocol"], "checkpoint": str(ckpt), "data": str(p["data"]), "results": res}
    out_dir = p["out_dir"] or default_eval_dir(ckpt, p["data"])
    res = protocols.evaluate_splits(
        ckpt,
        p["data"],
        query=p["query_split"],
        gallery=p["gallery_split"],
        image_root=p["image_root"],
        out_dir=out_dir,
        **common,
        **metric_options,
    )
    gal = res["gallery"] or "the queries, self excluded"
    say(f"{res['query']} against {gal}: embeddings in {out_dir}")
    if "mean" in res["results"]:  # DyML: three test sets and their mean
        for name, r in res["results"].items():
            shown = "  ".join(f"{k} {100 * r[k]:.2f}" for k in ("AP_level0", "R@1_level0", "ASI") if k in r)
            say(f"{name:>7}: {shown}")
    return {"mode": "checkpoint", "checkpoint": str(ckpt), "data": str(p["data"]), **res}
