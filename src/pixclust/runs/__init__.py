"""A run: its configuration, the pipeline that fills its folder, and the folder itself.

Named ``runs`` because ``pixclust.run`` is the public function that performs one.
"""
