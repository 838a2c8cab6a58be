"""tunesmith: fine-tune chat LLMs into your own assistant."""

__version__ = "0.1.0"
