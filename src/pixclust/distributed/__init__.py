"""Clustering past one machine's memory: embeddings read part by part from Parquet, placed by Ray tasks."""
