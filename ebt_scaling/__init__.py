"""ebt-scaling: measure how Energy-Based Transformers scale against Transformer++, one axis at a time."""

__version__ = "0.1.0"
