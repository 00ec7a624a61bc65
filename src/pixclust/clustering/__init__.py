"""The clustering stage: reduce the vectors, cluster them, choose k, score the result.

``reduce`` (PCA and other reductions), ``clusterer`` (k-means, GMM, agglomerative,
HDBSCAN behind one estimator), ``large_kmeans`` (faiss k-means fitted on a sample),
``adaptive`` (the default pipeline: views, representation and k chosen without
labels), ``refine`` (the self-labelling head), ``metrics`` (label-free and
ground-truth scores), ``maps`` (2-D projections).
"""
