"""Bridges from ONNX graphs to the math: node attributes, fusion sites, site models, the fuse pass."""
