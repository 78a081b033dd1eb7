"""Control images from photos with controlnet-aux (``annotate``): Canny offline, the others from the hub."""
from __future__ import annotations

import numpy as np

from ..runtime import require_extra
from .config import ANNOTATORS_ID

# ----------------------------------------------------------------------------------
# Annotators (controlnet-aux)
# ----------------------------------------------------------------------------------
ANNOTATORS = ("canny", "hed", "midas", "openpose", "mlsd", "lineart", "normalbae")
_AUX = {"hed": "HEDdetector", "midas": "MidasDetector", "openpose": "OpenposeDetector", "mlsd": "MLSDdetector",
        "lineart": "LineartDetector", "normalbae": "NormalBaeDetector"}


def _import_controlnet_aux():
    """controlnet-aux, imported without the notices it and its dependencies print on import
    (``torch.jit.script`` and ``timm.models.layers`` deprecations, timm registry overwrites, the
    optional mediapipe it does not need for any annotator here):
    they concern controlnet-aux's code, not the reader's. Only the import is silenced."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"Overwriting .* in registry", category=UserWarning)
        warnings.filterwarnings("ignore", message=r"The module 'mediapipe' is not installed", category=UserWarning)
        import controlnet_aux
    return controlnet_aux


def annotate(image, kind: str = "canny", **options):
    """A control image from a photo with controlnet-aux: ``"canny"`` works offline (OpenCV);
    the others need the ``lllyasviel/Annotators`` weights and fail with a clear message
    when those cannot be loaded."""
    from PIL import Image

    if kind not in ANNOTATORS:
        raise ValueError(f"kind: expected one of the annotators {ANNOTATORS}, got {kind!r}")
    require_extra(f"annotate({kind!r})", ("controlnet_aux",))
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if min(image.size) < 64:
        raise ValueError(f"image: expected at least 64 px on each side (controlnet-aux resizes to multiples of 64), "
                         f"got {image.size[0]}x{image.size[1]}")
    controlnet_aux = _import_controlnet_aux()
    if kind == "canny":
        CannyDetector = controlnet_aux.CannyDetector

        side = min(image.size)  # keep the input's size (controlnet-aux resizes to 512 by default)
        opts = {"low_threshold": 100, "high_threshold": 200, "detect_resolution": side, "image_resolution": side,
                **options}
        return CannyDetector()(image, **opts)
    try:
        detector = getattr(controlnet_aux, _AUX[kind]).from_pretrained(options.pop("repo", ANNOTATORS_ID))
    except Exception as e:  # offline, or the hub is unreachable
        raise RuntimeError(f"annotator {kind!r} needs the weights of {ANNOTATORS_ID!r} from the Hugging Face "
                           f"Hub, which could not be loaded ({type(e).__name__}: {str(e)[:200]}). Connect to the "
                           "internet or pre-download them; 'canny' works offline.") from e
    return detector(image, **options)
