"""chimera: multi-LLM serving over stock SGLang."""

__version__ = "0.1.0"
