"""The model graph: load it, shapes and receptive fields, activations, macroblocks, channel groups."""
