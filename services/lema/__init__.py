"""lema: learning from mistakes makes LLMs better reasoners."""

__version__ = "0.1.0"
