"""Cross-check with hglv2.metrics: with the exact step, the losses are 1 - the evaluated metrics.

The batch is passed as the explicit gallery, so nothing is excluded and the query counts as its own
positive, as in training.
"""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hglv2.losses import SupAP, SupHAP, SupNDCG

metrics = pytest.importorskip("hglv2.metrics.evaluate", reason="hglv2.metrics not merged yet")


def _compare(ours: torch.Tensor, metric: np.ndarray) -> None:
    metric = np.asarray(metric, dtype=np.float64)
    defined = ~np.isnan(metric)
    assert np.allclose(ours.numpy()[defined], 1.0 - metric[defined], atol=1e-5)
    assert (ours.numpy()[~defined] == 0).all()  # undefined queries are left out (0 per query)


@settings(max_examples=25)
@given(
    st.integers(2, 24),  # B
    st.integers(0, 12),  # extra reference items
    st.integers(1, 3),  # L
    st.integers(1, 5),  # label alphabet
    st.sampled_from(["pop", "map"]),
    st.sampled_from([0.5, 1.0, 2.0]),
    st.integers(0, 2**31 - 1),
)
def test_exact_losses_equal_hglv2_metrics(B, extra, L, K, relevance, alpha, seed):
    g = torch.Generator().manual_seed(seed)
    emb = torch.nn.functional.normalize(torch.randn(B, 8, generator=g), dim=1)
    lab = torch.randint(0, K, (B, L), generator=g)
    ref, ref_lab = emb, lab
    if extra:
        ref = torch.cat([emb, torch.nn.functional.normalize(torch.randn(extra, 8, generator=g), dim=1)])
        ref_lab = torch.cat([lab, torch.randint(0, K, (extra, L), generator=g)])
    kw = {} if not extra else {"ref_embeddings": ref, "ref_labels": ref_lab}
    res = metrics.evaluate(
        emb.numpy(),
        lab.numpy(),
        gallery_embeddings=ref.numpy(),
        gallery_labels=ref_lab.numpy(),
        relevance=relevance,
        alpha=alpha,
        reduce=False,
    )
    for col in range(L):
        ap = SupAP(level=col, approximation="exact", reduction="none")(emb, lab, **kw)
        _compare(ap, res[f"AP_level{col}"])
    hap = SupHAP(relevance=relevance, alpha=alpha, approximation="exact", reduction="none")(emb, lab, **kw)
    _compare(hap, res["H-AP"])
    _compare(SupNDCG(approximation="exact", reduction="none")(emb, lab, **kw), res["NDCG"])


def test_surrogate_is_close_to_and_above_metric_on_a_batch():
    g = torch.Generator().manual_seed(3)
    B = 64
    emb = torch.nn.functional.normalize(torch.randn(B, 16, generator=g), dim=1)
    cls = torch.arange(B) // 4
    lab = torch.stack([cls, cls // 4, cls // 8], 1)
    res = metrics.evaluate(
        emb.numpy(), lab.numpy(), gallery_embeddings=emb.numpy(), gallery_labels=lab.numpy(), reduce=True
    )
    assert SupAP()(emb, lab).item() >= 1 - res["AP_level0"] - 1e-6
    assert SupHAP()(emb, lab).item() >= 1 - res["H-AP"] - 1e-6
    assert SupNDCG()(emb, lab).item() >= 1 - res["NDCG"] - 1e-6
