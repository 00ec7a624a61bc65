"""Acting on a clustering: per-cluster folders, moves with a journal, look-alikes and duplicates."""
