#!/usr/bin/python3
"""scikit-learn reference for roid's k-means (test_kmeans.c).

Usage: kmeans_ref.py DIR
DIR/manifest.txt: one case a line, "name n d k".  Per case (raw, native):
    name.x       n x d float64 points
    name.truth   n int32 generating labels
    name.roid    n int32 labels from roid's refinement
    name.init    k x d float64 centres roid's refinement started from
    name.final   k x d float64 centres roid's refinement ended at
Writes DIR/name.ref, "key value" lines:
    ari_sklearn   ARI(roid, KMeans(k, n_init=10))
    ari_truth     ARI(roid, generating labels)
    inertia_ratio roid inertia / sklearn inertia
    lloyd_agree   fraction of labels equal to sklearn's Lloyd from roid's init
    lloyd_center  largest |centre difference| against that Lloyd run
    mean_J std_J  numpy mean and std (ddof 0) of column J
"""
import os
import sys

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score


def main():
    d = sys.argv[1]
    with open(os.path.join(d, "manifest.txt")) as f:
        for line in f:
            w = line.split()
            if not w:
                continue
            name, n, dim, k = w[0], int(w[1]), int(w[2]), int(w[3])
            p = lambda ext: os.path.join(d, name + "." + ext)
            x = np.fromfile(p("x"), dtype=np.float64).reshape(n, dim)
            truth = np.fromfile(p("truth"), dtype=np.int32)
            roid = np.fromfile(p("roid"), dtype=np.int32)
            init = np.fromfile(p("init"), dtype=np.float64).reshape(k, dim)
            final = np.fromfile(p("final"), dtype=np.float64).reshape(k, dim)

            km = KMeans(n_clusters=k, n_init=10, random_state=0).fit(x)
            roid_inertia = ((x - final[roid]) ** 2).sum()
            lloyd = KMeans(n_clusters=k, init=init, n_init=1, tol=0.0, max_iter=300,
                           algorithm="lloyd").fit(x)
            out = {
                "ari_sklearn": adjusted_rand_score(km.labels_, roid),
                "ari_truth": adjusted_rand_score(truth, roid),
                "inertia_ratio": roid_inertia / km.inertia_,
                "lloyd_agree": float((lloyd.labels_ == roid).mean()),
                "lloyd_center": float(np.abs(lloyd.cluster_centers_ - final).max()),
            }
            for j in range(dim):
                out["mean_%d" % j] = float(x[:, j].mean())
                out["std_%d" % j] = float(x[:, j].std())
            with open(p("ref"), "w") as o:
                for key, v in out.items():
                    o.write("%s %r\n" % (key, float(v)))


if __name__ == "__main__":
    main()
