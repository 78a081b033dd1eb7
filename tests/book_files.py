"""The book's notebooks, in one place for every test: chapters (NN_slug) and appendices (ANN_slug)."""
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted((ROOT / "chapters").glob("[0-9][0-9]_*.py"))
APPENDICES = sorted((ROOT / "chapters").glob("A[0-9][0-9]_*.py"))
NOTEBOOKS = CHAPTERS + APPENDICES
