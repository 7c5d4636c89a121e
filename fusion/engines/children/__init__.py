"""Scripts run as child processes by the engine adapters. They import the engine, never ``fusion``."""
