import os

# Every test is offline and fast: no hub downloads, smoke-sized runs.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("CNETLIB_SMOKE", "1")

import matplotlib

matplotlib.use("Agg")
