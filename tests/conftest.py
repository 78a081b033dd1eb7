import os

# Every test is offline and fast: no hub downloads, smoke-sized runs.
os.environ["HF_HUB_OFFLINE"] = "1"            # forced: no test may reach the hub
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("CNETLIB_SMOKE", "1")

import matplotlib

matplotlib.use("Agg")
