"""A site's CT/MR volume cache → :class:`VolumeCases`: the one place the 3D task meets the site's data.

:func:`load_volume_cases` is the hook the volume cache fills: the series reader
(``shared/imaging/volume*``) assembles each labelled series into a canonical volume at the consortium's
spacing, windowed to [0, 1], and stores it memory-mapped; this function turns the cached cases whose
label map has the task's segments into a :class:`VolumeCases` (``VolumeCases.from_npy`` or
``VolumeCases.from_arrays`` over memmaps). Everything else of the task (``load_site``,
``fedrad-site evaluate``, fine-tuning, federated rounds) goes through it and works unchanged once it does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.config import SiteDataConfig
    from shared.tasks.segmentation3d.dataset import VolumeCases

NOT_CONNECTED = (
    "3D segmentation cannot read this site's data yet: the CT/MR volume cache is not connected to the "
    "segmentation3d task (shared.tasks.segmentation3d.site.load_volume_cases)"
)


def load_volume_cases(cfg: SiteDataConfig, labels: list[str]) -> VolumeCases:
    """The site's labelled volumes for segments ``labels`` (value k of a label map = ``labels[k - 1]``).

    Contract: every case's image (D, H, W) canonical (axis 0 → S, 1 → P, 2 → L), resampled to the
    consortium's target spacing and windowed to [0, 1] (float, or uint16 with ``intensity_scale``), held as a
    memmap; its label map (D, H, W) uint8 the same shape; its spacing in mm; its patient id as the group;
    a site-local case id (e.g. the series' folder) for the report. ``sampling`` may be left at its default:
    the task sets the patch size and sampling from the consortium's settings.
    """
    raise NotImplementedError(NOT_CONNECTED)
