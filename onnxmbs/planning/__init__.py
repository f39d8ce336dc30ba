"""Planning (pure numpy): Algorithm 1, the typed plan document, k sweeps."""
