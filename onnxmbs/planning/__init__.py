"""Stage 5b — planning (pure numpy): Algorithm 1, the typed plan document, k sweeps."""
