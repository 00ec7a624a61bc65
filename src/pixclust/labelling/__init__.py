"""From a few example images per class to labels and a trained classifier."""
