"""Engine adapters: convert a model, run it in a child process, read back the parameters it fused.

Every engine implements ``fusion.engines.base.Engine``; judging a new converter is a new adapter.
"""
