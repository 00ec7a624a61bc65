"""The embedding stage: find image files, decode them, run a network, keep the vectors.

``images`` discovers and decodes files; ``models`` is the registry of networks and
their preprocessing; ``runtimes`` runs an exported graph (OpenVINO, ONNX Runtime);
``embedder`` feeds decoded batches through it; ``extraction`` drives a whole
collection into the ``store`` (resumable Parquet shards), locally or on an
``engines`` backend; ``sources`` opens vectors from a run folder or a ``.npy``.
"""
