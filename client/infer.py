"""``fedrad-site infer``: run a FedRad model on studies of the site's export and hand the results to PACS as DICOM.

The studies (``--study UID``, ``--accessions list.csv``) are found in the scan of the site's DICOM export
(:mod:`client.infer_studies`); their images are preprocessed exactly as the model's training images were (the
model file's preprocessing, the same cache), and the model's task gives the probabilities and decisions
(:meth:`shared.tasks.Task.predict`, :meth:`~shared.tasks.Task.decide`): no task name is compared here. What the
task's :attr:`~shared.tasks.Task.infer_result` says is written:

* ``findings`` (classification, multi-label): one Structured Report per study (:mod:`client.infer_sr`), and with
  ``--explain`` a Grad-CAM Secondary Capture per image and explained output (:mod:`client.infer_sc`);
* ``segments`` (2D segmentation): one DICOM SEG per source image (:mod:`client.infer_seg`).

Each object is in the source study, in a new series of its own, and goes to a folder, or to PACS by C-STORE or
STOW-RS (:mod:`client.infer_send`), study by study. Everything read and written is logged at the site
(:mod:`client.infer_log`). The model runs on one CPU thread unless ``--threads`` or site.yaml's ``threads`` says
otherwise (inference beside a PACS workstation should not take the machine).

Exit codes: 0 every object delivered; 1 some study missing or some object not delivered (each named);
2 bad input or configuration (nothing found to run on, no destination, a model the task cannot infer with).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.uid import generate_uid

from client.infer_common import ModelIdentity
from client.infer_log import InferLog, new_log_path
from client.infer_send import (
    Delivery,
    ResultObject,
    bearer_headers,
    send_dicomweb,
    send_dimse,
    tls_context,
    write_folder,
)
from client.infer_studies import StudyImages, find_studies, read_requests
from client.pacs_config import PacsSettings
from client.site_config import site_work_dir
from client.site_options import command_hardware, site_data_config
from shared.cli_support import progress_bar
from shared.config import ConfigError, load_yaml_mapping, parse_model
from shared.imaging import ScanResult, scan_site
from shared.modelfile import LoadedModel, load_model_file
from shared.packed import from_scan
from shared.tasks import INFER_RESULTS, Task, get_task

DESTINATIONS = ("folder", "pacs")
PROTOCOLS = ("dimse", "dicomweb")
DEFAULT_CALLING_AE = "FEDRAD"


@dataclass
class InferOptions:
    """What ``fedrad-site infer`` was asked (the CLI's flags)."""

    model: Path
    config: Path
    studies: list[str] = field(default_factory=list)
    accessions: Path | None = None
    to: str = "folder"
    out: Path | None = None
    via: str = "dimse"
    explain: bool = False
    device: str | None = None
    threads: int | None = None


@dataclass
class Destination:
    """Where the objects go, resolved and checked before anything runs."""

    to: str
    out: Path | None
    via: str
    pacs: PacsSettings
    calling_ae: str

    def describe(self) -> str:
        if self.to == "folder":
            return f"folder {self.out}"
        if self.via == "dicomweb":
            return f"STOW-RS {self.pacs.dicomweb.url}"
        peer = self.pacs.peer
        return f"C-STORE {peer.ae_title}@{peer.host}:{peer.port}{' (TLS)' if peer.tls else ''}"

    def deliver(self, objects: list[ResultObject]) -> list[Delivery]:
        if self.to == "folder":
            return write_folder(objects, self.out)
        copies = write_folder(objects, self.out) if self.out is not None else []
        if self.via == "dicomweb":
            sent = send_dicomweb(objects, self.pacs.dicomweb)
        else:
            sent = send_dimse(objects, self.pacs.peer, self.calling_ae)
        return copies + sent


def _destination(opts: InferOptions) -> Destination:
    if opts.to not in DESTINATIONS:
        raise ConfigError(f"--to must be one of {', '.join(DESTINATIONS)}, got {opts.to!r}")
    if opts.via not in PROTOCOLS:
        raise ConfigError(f"--via must be one of {', '.join(PROTOCOLS)}, got {opts.via!r}")
    section = load_yaml_mapping(opts.config).get("pacs") or {}
    pacs = parse_model(PacsSettings, section, f"{opts.config}: pacs", Path(opts.config).resolve().parent)
    if opts.to == "folder" and opts.out is None:
        raise ConfigError("--to folder needs --out DIR (one DICOM file per result object, a folder per study)")
    if opts.to == "pacs" and opts.via == "dimse" and pacs.peer is None:
        raise ConfigError(
            f"--to pacs: {opts.config} has no pacs.peer (the PACS's ae_title, host, port); add it, or use "
            "--via dicomweb with pacs.dicomweb, or --to folder --out DIR"
        )
    if opts.to == "pacs" and opts.via == "dicomweb" and pacs.dicomweb is None:
        raise ConfigError(f"--via dicomweb: {opts.config} has no pacs.dicomweb (url, token_file, ca); add it")
    if opts.to == "pacs" and opts.via == "dimse" and pacs.peer.tls is not None:
        tls_context(pacs.peer.tls)  # its files load now, not after the model ran
    if opts.to == "pacs" and opts.via == "dicomweb":
        bearer_headers(pacs.dicomweb)
    calling = pacs.node.ae_title if pacs.node is not None else DEFAULT_CALLING_AE
    return Destination(opts.to, Path(opts.out) if opts.out is not None else None, opts.via, pacs, calling)


def infer_task(loaded: LoadedModel, model_path: Path, explain: bool) -> Task:
    task = get_task(loaded.task)
    refusal = task.unsupported("infer")
    if refusal or task.infer_result not in INFER_RESULTS:
        raise ConfigError(f"{model_path}: {refusal or f'{task.name} names no result to write'}")
    refusal = task.unsupported("explain") if explain else None
    if refusal:
        raise ConfigError(f"--explain: {refusal}; leave it out for this model ({model_path})")
    return task


def _threads(opts: InferOptions) -> int | None:
    """--threads, else site.yaml's ``threads`` when it sets one, else 1."""
    if opts.threads is not None:
        return opts.threads
    return None if load_yaml_mapping(opts.config).get("threads") is not None else 1


def run_infer(
    opts: InferOptions, *, show_progress: bool = False, on_study: Callable[[dict], None] | None = None
) -> dict:
    """Run the model on the studies, deliver the objects, log everything; the summary (``exit_code`` in it).

    ConfigError (exit 2) for what is wrong before anything runs, including when no requested study is in the
    export; a missing study among others, or an object not delivered, is in the summary with exit code 1."""
    loaded = load_model_file(opts.model)
    task = infer_task(loaded, opts.model, opts.explain)
    destination = _destination(opts)
    requests = read_requests(opts.studies, opts.accessions)
    cfg = site_data_config(opts.config, image_size=loaded.preprocess.image_size, task=loaded.task, labelled=False)
    if not Path(cfg.data).is_dir():
        raise ConfigError(f"data folder {cfg.data} does not exist (set 'data' in {opts.config})")
    hardware = command_hardware(cfg, opts.config, opts.device, _threads(opts))
    identity = ModelIdentity.of(loaded, opts.model)
    summary: dict[str, Any] = {
        "model": identity.to_json(),
        "destination": destination.describe(),
        "hardware": hardware.describe(),
        "studies": [],
        "missing": [],
        "objects": [],
    }
    with InferLog(new_log_path(site_work_dir(opts.config))) as log:
        summary["log"] = str(log.path)
        log.event(
            "run",
            model=str(Path(opts.model).resolve()),
            **identity.to_json(),
            requested=[r.describe() for r in requests],
            destination=destination.describe(),
            explain=opts.explain,
            data=str(cfg.data),
            hardware=hardware.describe(),
        )
        with progress_bar("Scanning the export", enabled=show_progress) as update:
            scan = scan_site(Path(cfg.data), loaded.preprocess, cfg.resolved_cache_dir(), update)
        found, missing = find_studies(scan, requests)
        for gone in missing:
            text = gone.message(Path(cfg.data))
            summary["missing"].append({"request": gone.request.describe(), "message": text})
            log.event("missing", request=gone.request.describe(), message=text)
        if not found:
            log.event("end", exit_code=2, studies=0, delivered=0, failed=0)
            raise ConfigError("; ".join(m["message"] for m in summary["missing"]))
        for study in found:
            entry = _one_study(study, scan, loaded, task, identity, opts.explain, destination, log)
            summary["studies"].append(entry)
            summary["objects"] += entry.pop("deliveries")
            if on_study is not None:
                on_study(entry)
        delivered = sum(1 for d in summary["objects"] if d["ok"])
        failed = len(summary["objects"]) - delivered
        broken = sum(1 for s in summary["studies"] if s.get("error"))
        code = 0 if not (failed or broken or summary["missing"]) else 1
        summary.update(delivered=delivered, failed=failed, exit_code=code)
        log.event("end", exit_code=code, studies=len(found), delivered=delivered, failed=failed)
    return summary


def _one_study(
    study: StudyImages,
    scan: ScanResult,
    loaded: LoadedModel,
    task: Task,
    identity: ModelIdentity,
    explain: bool,
    destination: Destination,
    log: InferLog,
) -> dict:
    """Predict, build, deliver and log one study; its summary entry (with ``deliveries``)."""
    entry: dict[str, Any] = {
        "study_uid": study.study_uid,
        "accession": study.accession,
        "images": len(study.records),
        "deliveries": [],
    }
    for rec in study.rejected:
        log.event("skipped", study=study.study_uid, file=rec.path, reason=rec.reason, detail=rec.detail)
    started = time.perf_counter()
    data_dir = scan.data_dir
    try:
        sources = [pydicom.dcmread(data_dir / rec.path, stop_before_pixels=True) for rec in study.records]
        for rec, ds in zip(study.records, sources, strict=True):
            log.event(
                "read",
                study=study.study_uid,
                accession=study.accession,
                series=str(ds.get("SeriesInstanceUID", "")),
                sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
                sop_class_uid=str(ds.get("SOPClassUID", "")),
                file=rec.path,
                sha256=rec.sha256,
            )
        size = loaded.preprocess.image_size
        images = from_scan(scan, study.records, (size, size))  # the cached model inputs, as training reads them
        proba = task.predict(loaded.model, images)
        objects = _objects(study, sources, images, proba, loaded, task, identity, explain, data_dir, entry)
    except Exception as exc:  # one odd study (a header highdicom refuses) must not stop the others
        entry["error"] = f"{type(exc).__name__}: {exc}"
        log.event("failed", study=study.study_uid, error=entry["error"])
        return entry
    entry["seconds"] = round(time.perf_counter() - started, 3)
    for obj in objects:
        log.event(
            "written",
            study=obj.study_uid,
            kind=obj.kind,
            sop_instance_uid=obj.sop_instance_uid,
            sop_class_uid=obj.sop_class_uid,
            series=str(obj.dataset.SeriesInstanceUID),
            sources=obj.sources,
        )
    for result in destination.deliver(objects):
        log.event("delivered", **result.to_json())
        entry["deliveries"].append(result.to_json())
    return entry


def _objects(
    study: StudyImages,
    sources: list[pydicom.Dataset],
    images,  # noqa: ANN001 - a tensor or shared.packed.PackedImages
    proba: np.ndarray,
    loaded: LoadedModel,
    task: Task,
    identity: ModelIdentity,
    explain: bool,
    data_dir: Path,
    entry: dict,
) -> list[ResultObject]:
    """The DICOM objects of one study, as its task's result says."""
    sops = [str(ds.SOPInstanceUID) for ds in sources]
    objects: list[ResultObject] = []
    if task.infer_result == "findings":
        from client.infer_sr import findings_report

        decided = task.decide(proba, loaded.threshold)
        sr = findings_report(sources, proba, decided, identity)
        objects.append(ResultObject("SR", sr, study.study_uid, sops))
        entry["findings"] = {
            sop: {
                name: {"probability": float(proba[i, j]), "present": bool(decided[i, j])}
                for j, name in enumerate(identity.outputs)
            }
            for i, sop in enumerate(sops)
        }
        if explain:
            objects += _captures(study, sources, images, proba, decided, loaded, task, identity, data_dir)
    else:  # "segments"
        from client.infer_seg import native_masks, segmentation

        series = generate_uid()
        entry["segments"] = {}
        for i, ds in enumerate(sources):
            masks = native_masks(proba[i], int(ds.Rows), int(ds.Columns), lambda p: task.decide(p, loaded.threshold))
            seg = segmentation(ds, masks, identity, series_uid=series, instance_number=i + 1)
            objects.append(ResultObject("SEG", seg, study.study_uid, [sops[i]]))
            entry["segments"][sops[i]] = {name: int(masks[k].sum()) for k, name in enumerate(identity.outputs)}
    return objects


def _captures(
    study: StudyImages,
    sources: list[pydicom.Dataset],
    images,  # noqa: ANN001
    proba: np.ndarray,
    decided: np.ndarray,
    loaded: LoadedModel,
    task: Task,
    identity: ModelIdentity,
    data_dir: Path,
) -> list[ResultObject]:
    from client.infer_sc import display_image, grad_cam_capture, native_heat, overlay_pixels

    series = generate_uid()
    out: list[ResultObject] = []
    for i, (rec, ds) in enumerate(zip(study.records, sources, strict=True)):
        picture = None
        for j in task.explain_outputs(proba[i], decided[i]):
            heat = task.saliency(loaded.model, images[i : i + 1], j)[0]
            picture = display_image(data_dir / rec.path) if picture is None else picture
            name = identity.outputs[j]
            caption = f"Grad-CAM: {name}, P = {proba[i, j]:.3f} (FedRad {identity.version[:8]})"
            pixels = overlay_pixels(picture, native_heat(heat, picture.shape[0], picture.shape[1]), caption)
            sc = grad_cam_capture(
                ds, pixels, name, float(proba[i, j]), identity, series_uid=series, instance_number=len(out) + 1
            )
            out.append(ResultObject("SC", sc, study.study_uid, [str(ds.SOPInstanceUID)]))
    return out
