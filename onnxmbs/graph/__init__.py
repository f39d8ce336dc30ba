"""Stages 1-4 — load the model, shapes and receptive fields, activations, macroblocks, channel groups."""
