"""What every object ``fedrad-site infer`` writes shares: the model's identity as DICOM sees it, and the codes.

Codes: a class, finding or segment name from the model file gets a standard concept where DICOM's own code
tables (pydicom's copy of PS3.16) have one of exactly that meaning (``effusion`` → SCT 41699000 Effusion,
``lung`` → SCT 39607008 Lung), and otherwise a concept of the private coding scheme ``99FEDRAD`` whose value and
meaning are the name itself (``consolidation``). Why a curated table and not a fuzzy lookup: a wrong standard code
is worse than an honest private one; a viewer shows the meaning either way.

Identity: the algorithm is "FedRad", its version the model's weights SHA-256 (first 16 hex digits; the model
file's identity everywhere in FedRad), its parameters the provenance (who trained it, local or federated, rounds,
epochs, when) and the decision rule. Every result object is marked "not for diagnosis".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from shared.modelfile import LoadedModel
from shared.tasks import get_task

PRIVATE_SCHEME = "99FEDRAD"
ALGORITHM_NAME = "FedRad"
MANUFACTURER = "FedRad"
NOT_FOR_DIAGNOSIS = "NOT FOR DIAGNOSIS"
SR_SERIES_DESCRIPTION = "FedRad AI result (not for diagnosis)"
SEG_SERIES_DESCRIPTION = "FedRad AI segmentation (not for diagnosis)"
SC_SERIES_DESCRIPTION = "FedRad Grad-CAM overlay (not for diagnosis)"
# Series numbers of the result series: high, so a viewer lists them after the acquisition's own series.
SERIES_NUMBERS = {"SR": 9901, "SEG": 9902, "SC": 9903}

# Output name (lower case, '_' or ' ' between words) → a standard concept of exactly that meaning.
_FINDINGS = {
    "normal": codes.SCT.Normal,
    "abnormal": codes.SCT.Abnormal,
    "nodule": codes.SCT.Nodule,
    "mass": codes.SCT.Mass,
    "effusion": codes.SCT.Effusion,
    "pleural_effusion": codes.SCT.PleuralEffusion,
    "pericardial_effusion": codes.SCT.PericardialEffusion,
    "cardiomegaly": codes.SCT.Cardiomegaly,
    "pneumothorax": codes.SCT.Pneumothorax,
    "edema": codes.SCT.Edema,
    "pulmonary_edema": codes.SCT.PulmonaryEdema,
    "fibrosis": codes.SCT.Fibrosis,
    "emphysema": None,  # not in DICOM's tables: private
}
# Segment name → (segmented property category, type) of a DICOM SEG segment.
_ANATOMY = {"lung": codes.SCT.Lung, "heart": codes.SCT.Heart}
_ABNORMAL = {"nodule": codes.SCT.Nodule, "mass": codes.SCT.Mass, "effusion": codes.SCT.Effusion}


def _key(name: str) -> str:
    return "_".join(name.strip().lower().replace("-", " ").replace("_", " ").split())


def private_code(name: str):  # noqa: ANN201 - highdicom.sr.CodedConcept
    """A ``99FEDRAD`` concept for ``name``: value and meaning the name (a name longer than CodeValue's 16
    characters goes to LongCodeValue, as highdicom does: two long names never collide)."""
    from highdicom.sr import CodedConcept

    return CodedConcept(value=name, scheme_designator=PRIVATE_SCHEME, meaning=name[:64])


def private_scheme() -> Dataset:
    """An item of CodingSchemeIdentificationSequence declaring ``99FEDRAD`` (SOP Common: private schemes used)."""
    item = Dataset()
    item.CodingSchemeDesignator = PRIVATE_SCHEME
    item.CodingSchemeName = "FedRad model output names"
    item.CodingSchemeResponsibleOrganization = "FedRad consortium of the model (see the algorithm parameters)"
    return item


def finding_code(name: str):  # noqa: ANN201
    """The concept of a class or finding ``name``: standard where one has exactly that meaning, else private."""
    from highdicom.sr import CodedConcept

    code = _FINDINGS.get(_key(name))
    if code is None:
        return private_code(name)
    return CodedConcept(value=code.value, scheme_designator=code.scheme_designator, meaning=code.meaning)


def segment_codes(name: str) -> tuple:
    """(category, type) of a segment called ``name``: anatomy or an abnormal structure where the name is one of
    DICOM's, else a private type under the category 'Morphologically Abnormal Structure' (what a model segments
    that is not named anatomy is usually a finding)."""
    key = _key(name)
    if key in _ANATOMY:
        return codes.SCT.AnatomicalStructure, _ANATOMY[key]
    return codes.SCT.MorphologicallyAbnormalStructure, _ABNORMAL.get(key) or private_code(name)


@dataclass
class ModelIdentity:
    """The model as the result objects name it (TID 4019 Algorithm Identification, SEG's algorithm sequence)."""

    file_name: str
    task: str
    architecture: str
    outputs: list[str]
    weights_sha256: str
    provenance: dict
    decision_rule: str
    device_uid: str = ""
    parameters: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, loaded: LoadedModel, model_path: Path) -> ModelIdentity:
        prov = loaded.provenance
        rule = get_task(loaded.task).decision_rule(loaded.outputs, loaded.threshold)
        params = {
            "model": Path(model_path).name,
            "task": loaded.task,
            "architecture": loaded.architecture,
            "trained_by": str(prov.get("trained_by")),
            "kind": str(prov.get("kind")),
            "rounds": str(prov.get("rounds")),
            "epochs": str(prov.get("epochs")),
            "created": str(prov.get("created")),
            "fedrad_version": str(prov.get("fedrad_version")),
            "weights_sha256": loaded.weights_sha256,
            "threshold": str(loaded.threshold),
            "decision": rule,
        }
        return cls(
            file_name=Path(model_path).name,
            task=loaded.task,
            architecture=loaded.architecture,
            outputs=list(loaded.outputs),
            weights_sha256=loaded.weights_sha256,
            provenance=dict(prov),
            decision_rule=rule,
            # One device per model: the same weights are the same observer in every report.
            device_uid=generate_uid(entropy_srcs=["fedrad-model", loaded.weights_sha256]),
            parameters=params,
        )

    @property
    def version(self) -> str:
        return self.weights_sha256[:16]

    @property
    def model_name(self) -> str:
        """The device's model name (LO, 64 characters at most)."""
        return f"FedRad {self.task} {self.architecture}"[:64]

    def sr_algorithm(self):  # noqa: ANN201 - highdicom.sr.AlgorithmIdentification
        from highdicom.sr import AlgorithmIdentification

        return AlgorithmIdentification(
            name=ALGORITHM_NAME,
            version=self.version,
            parameters=[f"{k}={v}" for k, v in self.parameters.items()],
        )

    def seg_algorithm(self):  # noqa: ANN201 - highdicom.AlgorithmIdentificationSequence
        from highdicom import AlgorithmIdentificationSequence

        return AlgorithmIdentificationSequence(
            name=ALGORITHM_NAME,
            family=codes.DCM.ArtificialIntelligence,
            version=self.version,
            source=str(self.provenance.get("trained_by"))[:64],
            parameters=dict(self.parameters),
        )

    def to_json(self) -> dict:
        return {
            "file": self.file_name,
            "task": self.task,
            "architecture": self.architecture,
            "weights_sha256": self.weights_sha256,
            "trained_by": self.provenance.get("trained_by"),
            "kind": self.provenance.get("kind"),
            "rounds": self.provenance.get("rounds"),
            "decision": self.decision_rule,
        }
