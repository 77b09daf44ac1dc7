#!/usr/bin/env python3
"""scib's integration metrics on one embedding, as scGPT's ``eval_scib_metrics`` computes them.

usage: scib_metrics.py FILE.h5ad EMBED_KEY LABEL_KEY BATCH_KEY

Prints one JSON object: NMI_cluster/label, ARI_cluster/label, ASW_label, ASW_label/batch,
graph_conn (scib 1.1.7, neighbours recomputed by scanpy on obsm[EMBED_KEY], Leiden clustering
at scib's optimal resolution), avg_bio = mean(NMI, ARI, ASW_label) and
avg_batch = mean(ASW_label/batch, graph_conn). Used by ``cargo bench --bench annotation`` to
put scib's numbers beside cellforge's for the same embedding. Versions: see
``scripts/reference/analysis-requirements.txt``.
"""
import json
import sys
import warnings

warnings.filterwarnings("ignore")

import anndata as ad  # noqa: E402
import numpy as np  # noqa: E402
import scib  # noqa: E402

warnings.filterwarnings("ignore")


def scgpt_scib_table(adata, embed, label_key, batch_key):
    """scib.metrics.metrics with scGPT's ``eval_scib_metrics`` flags (PC regression off: it
    needs the unintegrated object and is not part of AvgBIO/AvgBATCH) on a copy of ``adata``
    without precomputed neighbours. Returns {metric: value}, NaN ones dropped."""
    a = adata.copy()
    a.uns.pop("neighbors", None)
    for k in list(a.obsp.keys()):
        del a.obsp[k]
    table = scib.metrics.metrics(
        a,
        adata_int=a,
        batch_key=batch_key,
        label_key=label_key,
        embed=embed,
        isolated_labels_asw_=False,
        silhouette_=True,
        hvg_score_=False,
        graph_conn_=True,
        pcr_=False,
        isolated_labels_f1_=False,
        trajectory_=False,
        nmi_=True,
        ari_=True,
        cell_cycle_=False,
        kBET_=False,
        ilisi_=False,
        clisi_=False,
        verbose=False,
    )
    return {k: float(v) for k, v in table[0].to_dict().items() if v == v}


def main():
    path, embed, label_key, batch_key = sys.argv[1:5]
    a = ad.read_h5ad(path)
    a.obsm[embed] = np.asarray(a.obsm[embed], dtype=np.float32)
    t = scgpt_scib_table(a, embed, label_key, batch_key)
    t["avg_bio"] = float(np.mean([t["NMI_cluster/label"], t["ARI_cluster/label"], t["ASW_label"]]))
    t["avg_batch"] = float(np.mean([t["ASW_label/batch"], t["graph_conn"]]))
    print(json.dumps(t))


if __name__ == "__main__":
    main()
