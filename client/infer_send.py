"""Where ``fedrad-site infer``'s objects go: a folder, PACS by C-STORE (DIMSE), or PACS by STOW-RS (DICOMweb).

Every object gets its own :class:`Delivery`: stored or not, and the status PACS gave (a DIMSE status code, the
STOW-RS response's failure reason, an HTTP status), or why it never got that far (association rejected, no
connection). Nothing is retried silently; the log and the command's exit code say what happened.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from client.pacs_config import DicomWebSettings, PeerSettings, TlsFiles
from shared.config import ConfigError
from shared.private_files import private_dir, private_file

# DIMSE statuses a storage SCP may answer that still mean "stored" (PS3.4 B.2.3: coercion, elements discarded)
STORE_WARNINGS = {
    0xB000: "coercion of data elements",
    0xB006: "elements discarded",
    0xB007: "data set does not match SOP class",
}


@dataclass
class ResultObject:
    """One DICOM object infer made, with what it is about."""

    kind: str  # "SR", "SEG" or "SC"
    dataset: Dataset
    study_uid: str
    sources: list[str]  # SOPInstanceUIDs of the source images it is about

    @property
    def sop_instance_uid(self) -> str:
        return str(self.dataset.SOPInstanceUID)

    @property
    def sop_class_uid(self) -> str:
        return str(self.dataset.SOPClassUID)


@dataclass
class Delivery:
    """What happened to one object at its destination."""

    sop_instance_uid: str
    sop_class_uid: str
    kind: str
    study_uid: str
    destination: str
    ok: bool
    status: str  # "0x0000 success", "written", "0xA700 failure: out of resources", "association rejected: …"
    file: str | None = None

    def to_json(self) -> dict:
        return asdict(self)


def _delivery(obj: ResultObject, destination: str, ok: bool, status: str, file: str | None = None) -> Delivery:
    return Delivery(obj.sop_instance_uid, obj.sop_class_uid, obj.kind, obj.study_uid, destination, ok, status, file)


def object_file(out: Path, obj: ResultObject) -> Path:
    """Where an object lands in a folder: ``OUT/<StudyInstanceUID>/<kind>-<SOPInstanceUID>.dcm``."""
    return Path(out) / obj.study_uid / f"{obj.kind}-{obj.sop_instance_uid}.dcm"


def write_folder(objects: Sequence[ResultObject], out: Path) -> list[Delivery]:
    """Each object as a DICOM Part 10 file (owner-only: these are patients' results)."""
    results = []
    for obj in objects:
        path = object_file(out, obj)
        try:
            private_dir(path.parent)
            with private_file(path, "wb") as fh:
                obj.dataset.save_as(fh, enforce_file_format=True)
        except OSError as exc:
            results.append(_delivery(obj, str(out), False, f"not written: {exc.strerror or exc}", str(path)))
            continue
        results.append(_delivery(obj, str(out), True, "written", str(path)))
    return results


def tls_context(tls: TlsFiles) -> ssl.SSLContext:
    """The client side of DICOM over TLS: TLS 1.2 or later, the PACS's certificate checked against ``tls.ca`` (the
    system's CAs without one) and its host name, our certificate shown when ``tls.cert`` is set. ConfigError when
    the files cannot be loaded."""
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca) if tls.ca else None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if tls.cert is not None and tls.key is not None:
            context.load_cert_chain(str(tls.cert), str(tls.key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"pacs.peer.tls: cannot load the TLS files ({exc})") from None
    return context


def bearer_headers(web: DicomWebSettings) -> dict[str, str]:
    """The Authorization header from ``token_file`` (none without one); ConfigError when it cannot be read."""
    if web.token_file is None:
        return {}
    try:
        token = Path(web.token_file).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"pacs.dicomweb.token_file {web.token_file}: {exc.strerror or exc}") from None
    if not token:
        raise ConfigError(f"pacs.dicomweb.token_file {web.token_file} is empty")
    return {"Authorization": f"Bearer {token}"}


def _status_text(code: int) -> str:
    from pynetdicom.status import code_to_category

    if code == 0x0000:
        return "0x0000 success"
    if code in STORE_WARNINGS:
        return f"0x{code:04X} warning: {STORE_WARNINGS[code]}"
    return f"0x{code:04X} {code_to_category(code).lower()}"


def send_dimse(objects: Sequence[ResultObject], peer: PeerSettings, calling_ae: str) -> list[Delivery]:
    """C-STORE every object to ``peer`` over one association (TLS when ``peer.tls`` is set)."""
    from pynetdicom import AE

    destination = f"{peer.ae_title}@{peer.host}:{peer.port}"
    if not objects:
        return []
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = peer.timeout_s
    ae.connection_timeout = peer.timeout_s
    for sop_class in dict.fromkeys(obj.sop_class_uid for obj in objects):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    tls_args = (tls_context(peer.tls), peer.host) if peer.tls is not None else None
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, tls_args=tls_args)
    if not assoc.is_established:
        why = _association_failure(assoc, destination)
        return [_delivery(obj, destination, False, why) for obj in objects]
    results = []
    try:
        for obj in objects:
            if not assoc.is_established:
                results.append(_delivery(obj, destination, False, "association ended before it was sent"))
                continue
            try:
                status = assoc.send_c_store(obj.dataset)
            except (ValueError, RuntimeError) as exc:  # e.g. no accepted presentation context for its SOP class
                results.append(_delivery(obj, destination, False, f"not sent: {exc}"))
                continue
            if "Status" not in status:
                results.append(_delivery(obj, destination, False, "no reply (timeout or connection lost)"))
                continue
            code = int(status.Status)
            ok = code == 0x0000 or code in STORE_WARNINGS
            text = _status_text(code)
            if not ok and status.get("ErrorComment"):
                text += f": {status.ErrorComment}"
            results.append(_delivery(obj, destination, ok, text))
    finally:
        if assoc.is_established:
            assoc.release()
    return results


def _association_failure(assoc, destination: str) -> str:  # noqa: ANN001 - pynetdicom Association
    if assoc.is_rejected:
        primitive = getattr(assoc.acceptor, "primitive", None)
        result = getattr(primitive, "result_str", "") or "Rejected"
        reason = getattr(primitive, "reason_str", "") or "no reason given"
        return f"association rejected by {destination} ({result.lower()}: {reason})"
    # pynetdicom reports a refused TCP connection, a TLS failure and an A-ABORT alike
    return (
        f"no association with {destination}: connection refused, aborted or timed out "
        "(is PACS listening there, and does it expect TLS?)"
    )


def send_dicomweb(objects: Sequence[ResultObject], web: DicomWebSettings) -> list[Delivery]:
    """STOW-RS the objects of each study to ``web.url`` (one request per study), per object its outcome."""
    import requests
    from dicomweb_client.api import DICOMwebClient

    destination = web.url
    session = requests.Session()
    session.trust_env = False  # the hospital's PACS, not a proxy from the environment
    if web.ca is not None:
        session.verify = str(web.ca)
    client = DICOMwebClient(web.url, session=session, headers=bearer_headers(web))
    results: list[Delivery] = []
    by_study: dict[str, list[ResultObject]] = {}
    for obj in objects:
        by_study.setdefault(obj.study_uid, []).append(obj)
    for study_uid, batch in by_study.items():
        try:
            response = client.store_instances([o.dataset for o in batch], study_instance_uid=study_uid)
        except requests.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else "?"
            results += [_delivery(o, destination, False, f"HTTP {code}: {str(exc)[:200]}") for o in batch]
            continue
        except requests.RequestException as exc:
            results += [_delivery(o, destination, False, f"no answer: {type(exc).__name__}: {exc}") for o in batch]
            continue
        results += _stow_outcomes(batch, response, destination)
    return results


def _stow_outcomes(batch: list[ResultObject], response: Dataset, destination: str) -> list[Delivery]:
    """Per object: stored when the response lists it under ReferencedSOPSequence, failed (with its FailureReason)
    under FailedSOPSequence; a 200 without a listing counts as stored."""
    stored = {str(i.ReferencedSOPInstanceUID): i for i in (response.get("ReferencedSOPSequence") or [])}
    failed = {str(i.ReferencedSOPInstanceUID): i for i in (response.get("FailedSOPSequence") or [])}
    out = []
    for obj in batch:
        if obj.sop_instance_uid in failed:
            reason = failed[obj.sop_instance_uid].get("FailureReason")
            out.append(_delivery(obj, destination, False, f"STOW-RS failure 0x{int(reason or 0):04X}"))
        elif obj.sop_instance_uid in stored:
            warning = stored[obj.sop_instance_uid].get("WarningReason")
            out.append(
                _delivery(obj, destination, True, "stored" + (f" (warning 0x{int(warning):04X})" if warning else ""))
            )
        else:
            out.append(_delivery(obj, destination, not failed, "stored (not listed in the response)"))
    return out
