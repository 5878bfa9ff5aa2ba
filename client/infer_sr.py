"""A classification or multi-label result as a DICOM Structured Report: TID 1500 in a Comprehensive 3D SR.

One SR per study. Why per study and not per image: a viewer files and shows one report with the study (a
PA and a lateral film are one examination), PACS and the site's log track one object per study, and nothing is
lost: every image still has its own measurement groups, each referencing that image.

Content (highdicom's :class:`~highdicom.sr.MeasurementReport`, TID 1500 "Imaging Measurement Report"): per
source image and per output (class or finding) one TID 1501 measurement group with

* Finding: the output's concept (:func:`client.infer_common.finding_code`: SCT where one exists, else 99FEDRAD);
* Source image: the image it was computed on;
* Algorithm identification (TID 4019): FedRad, the weights' SHA-256 as version, provenance as parameters;
* a measurement "Probability" (DCM 122157), unit UCUM "1", the model's output exactly (the float32 value, kept
  as a 64-bit float besides the decimal string);
* a qualitative evaluation of the finding: Present / Absent (SCT), the task's decision at the model's threshold.

The observer is the device "FedRad" (one UID per model); the SR is preliminary, unverified, in a new series
"FedRad AI result (not for diagnosis)" of the source study, and lists the source images as evidence.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from client.infer_common import (
    MANUFACTURER,
    PRIVATE_SCHEME,
    SERIES_NUMBERS,
    SR_SERIES_DESCRIPTION,
    ModelIdentity,
    finding_code,
    private_scheme,
)


def findings_report(
    sources: list[Dataset],
    proba: np.ndarray,
    decided: np.ndarray,
    model: ModelIdentity,
    *,
    series_uid: str | None = None,
) -> Dataset:
    """The SR of one study: ``sources`` (headers of its images, in the order of ``proba``'s rows), ``proba``
    (images × outputs) and ``decided`` (the same shape, bool)."""
    import highdicom as hd

    algorithm = model.sr_algorithm()
    groups = []
    for i, image in enumerate(sources):
        source = hd.sr.SourceImageForMeasurementGroup.from_source_image(image)
        for j, name in enumerate(model.outputs):
            concept = finding_code(name)
            groups.append(
                hd.sr.MeasurementsAndQualitativeEvaluations(
                    tracking_identifier=hd.sr.TrackingIdentifier(
                        uid=generate_uid(), identifier=f"FedRad {name} image {i + 1}"
                    ),
                    finding_type=concept,
                    algorithm_id=algorithm,
                    source_images=[source],
                    measurements=[
                        hd.sr.Measurement(
                            name=codes.DCM.Probability,
                            value=float(proba[i, j]),
                            unit=codes.UCUM.NoUnits,
                            algorithm_id=algorithm,
                        )
                    ],
                    qualitative_evaluations=[
                        hd.sr.QualitativeEvaluation(
                            name=concept, value=codes.SCT.Present if decided[i, j] else codes.SCT.Absent
                        )
                    ],
                )
            )
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=model.device_uid, name="FedRad", manufacturer_name=MANUFACTURER, model_name=model.model_name
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.SCT.ImagingProcedure,
        imaging_measurements=groups,
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=sources,
        content=report,
        series_instance_uid=series_uid or generate_uid(),
        series_number=SERIES_NUMBERS["SR"],
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,  # PRELIMINARY: a machine's result no one has verified
        is_verified=False,
    )
    sr.SeriesDescription = SR_SERIES_DESCRIPTION
    if any(finding_code(name).scheme_designator == PRIVATE_SCHEME for name in model.outputs):
        sr.CodingSchemeIdentificationSequence = [private_scheme()]  # SOP Common: the private scheme used
    sr.ManufacturerModelName = model.model_name
    sr.SoftwareVersions = model.version
    return sr


def read_findings(sr: Dataset) -> dict[str, dict[tuple[str, str], dict[str, object]]]:
    """What an SR written by :func:`findings_report` says, read back with highdicom: source image SOPInstanceUID →
    the finding's code (scheme, value) → {"meaning", "probability" (float), "present" (bool), "unit"}."""
    import highdicom as hd

    doc = hd.sr.Comprehensive3DSR.from_dataset(sr, copy=True)
    out: dict[str, dict[tuple[str, str], dict[str, object]]] = {}
    for group in doc.content.get_image_measurement_groups():
        finding = group.finding_type
        sop = group.source_images[0].referenced_sop_instance_uid
        probability = group.get_measurements(name=codes.DCM.Probability)[0]
        evaluation = group.get_qualitative_evaluations(name=finding)[0]
        out.setdefault(sop, {})[(finding.scheme_designator, finding.value)] = {
            "meaning": finding.meaning,
            "probability": float(probability.value),  # highdicom reads the 64-bit FloatingPointValue first
            "present": evaluation.value == codes.SCT.Present,
            "unit": probability.unit.value,
        }
    return out
