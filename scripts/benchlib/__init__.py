"""The benchmark behind `scripts/bench`: the original algorithm vs this function, one run."""
