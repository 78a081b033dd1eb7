"""Command-line experiments that reproduce the book's measured claims (chapter 04 on)."""
