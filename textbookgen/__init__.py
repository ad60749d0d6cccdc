"""textbookgen: textbook-quality synthetic pretraining data, the phi-1.5 recipe."""

__version__ = "0.1.0"
