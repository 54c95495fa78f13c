"""Kernels defined outside the search_spaces package, registered the way a user's would be."""
