"""``infer --explain``: a Grad-CAM overlay as a DICOM Secondary Capture, marked "NOT FOR DIAGNOSIS" in the pixels.

One RGB image per source image and explained output (the task says which: :meth:`shared.tasks.Task.explain_outputs`,
e.g. a binary classifier's positive class, a multi-label model's findings it calls present). The saliency map
is the task's (:meth:`shared.tasks.Task.saliency`: Grad-CAM on the last convolution, the code behind
``fedrad-site evaluate --explain``), put back onto the source image's pixels
(:func:`shared.imaging.planar.to_native_grid`) and blended over the source image (its modality values, percentile
windowed as the model sees them), weighted by the map, so regions the model ignored stay grey. A black band
above the image (never over it) carries the burned-in text; BurnedInAnnotation is YES, and ImageComments and
DerivationDescription say what the image is. Larger images are shown at most :data:`MAX_SIDE` pixels wide.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from client.infer_common import (
    MANUFACTURER,
    NOT_FOR_DIAGNOSIS,
    SC_SERIES_DESCRIPTION,
    SERIES_NUMBERS,
    ModelIdentity,
)
from shared.imaging.modality import read_image
from shared.imaging.planar import percentile_window, to_native_grid

MAX_SIDE = 1024  # an overlay is an illustration: no need for a 3000-pixel RGB image in PACS
ALPHA = 0.6  # the heat map's weight where the model looked most


def display_image(path: Path) -> np.ndarray:
    """The source radiograph as the model sees it, at full resolution: (rows, columns) float32 in [0, 1], dense =
    bright (modality values, percentile window of the model's default preprocessing)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        _, decoded = read_image(Path(path).read_bytes())
    return percentile_window(decoded.modality_values(), 0.5, 99.5)


def overlay_pixels(image: np.ndarray, heat: np.ndarray, caption: str) -> np.ndarray:
    """(H, W, 3) uint8: ``image`` (rows, columns) in [0, 1] with ``heat`` (the same shape, [0, 1]) as a jet colour
    map over it, scaled to at most :data:`MAX_SIDE`, below a black band with ``NOT FOR DIAGNOSIS`` and ``caption``."""
    from matplotlib import colormaps

    heat = np.clip(heat, 0.0, 1.0)
    alpha = (ALPHA * heat)[..., None]
    rgb = (1.0 - alpha) * image[..., None] + alpha * colormaps["jet"](heat)[..., :3]
    picture = Image.fromarray(np.round(rgb * 255).astype(np.uint8), mode="RGB")
    scale = min(1.0, MAX_SIDE / max(picture.size))
    if scale < 1.0:
        picture = picture.resize((max(1, round(picture.width * scale)), max(1, round(picture.height * scale))))
    width = max(picture.width, 256)  # room for the text on a small image
    size = max(10, width // 22)
    band = 2 * size + 3 * max(2, size // 4)
    canvas = Image.new("RGB", (width, picture.height + band), (0, 0, 0))
    canvas.paste(picture, ((width - picture.width) // 2, band))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=size)
    pad = max(2, size // 4)
    draw.text((pad, pad), NOT_FOR_DIAGNOSIS, fill=(255, 255, 0), font=font)
    draw.text((pad, 2 * pad + size), caption, fill=(255, 255, 255), font=font)
    return np.asarray(canvas)


def grad_cam_capture(
    source: Dataset,
    pixels: np.ndarray,
    output: str,
    probability: float,
    model: ModelIdentity,
    *,
    series_uid: str,
    instance_number: int,
) -> Dataset:
    """The Secondary Capture of one overlay (``pixels`` from :func:`overlay_pixels`) of ``source``."""
    import highdicom as hd

    orientation = source.get("PatientOrientation")
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=series_uid,
        series_number=SERIES_NUMBERS["SC"],
        sop_instance_uid=generate_uid(),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        patient_orientation=("L", "F"),  # replaced below by the source's (highdicom insists on a value)
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    sc.PatientOrientation = list(orientation) if orientation else ""  # Type 2: empty when the source has none
    # General Series: the source's body part, and its laterality (Type 2C: needed for a paired structure only)
    if source.get("BodyPartExamined"):
        sc.BodyPartExamined = source.BodyPartExamined
    laterality = source.get("Laterality") or source.get("ImageLaterality")
    if laterality in ("L", "R"):
        sc.Laterality = laterality
    elif "BodyPartExamined" not in sc:
        sc.Laterality = ""  # unknown: whether the part is paired cannot be told
    what = (
        f"FedRad Grad-CAM of '{output}' (probability {probability:.3f}) on the source image; model weights "
        f"{model.weights_sha256[:16]}. {NOT_FOR_DIAGNOSIS}: an illustration of where the model looked"
    )
    sc.BurnedInAnnotation = "YES"
    sc.ImageComments = what[:10240]
    sc.DerivationDescription = what[:1024]
    sc.SeriesDescription = SC_SERIES_DESCRIPTION
    sc.ManufacturerModelName = model.model_name
    sc.SoftwareVersions = model.version
    sc.ConversionType = "WSD"  # workstation: made by software, not digitised from film
    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    sc.SourceImageSequence = [ref]
    return sc


def native_heat(saliency: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """A (S, S) saliency map → (rows, columns) on the source image's pixels, in [0, 1]."""
    return np.clip(to_native_grid(saliency, rows, columns), 0.0, 1.0)
