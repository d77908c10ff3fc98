"""Input: data sources and their iteration as global batches."""
